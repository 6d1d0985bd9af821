"""Writes a tiny dataset in the MovieLens-100k file format (the real one is not redistributable)."""

from pathlib import Path

import numpy as np


def write_movielens_fixture(d: Path, n_users: int = 30, n_items: int = 40, per_user: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    occupations = ["student", "engineer", "artist", "doctor"]
    with open(d / "u.user", "w", encoding="latin-1") as f:
        for u in range(1, n_users + 1):
            f.write(f"{u}|{rng.integers(12, 70)}|{'MF'[u % 2]}|{occupations[u % 4]}|{rng.integers(10000, 99999)}\n")
    with open(d / "u.item", "w", encoding="latin-1") as f:
        for i in range(1, n_items + 1):
            flags = "|".join(str(int(x)) for x in rng.random(19) < 0.15)
            f.write(f"{i}|Movie {i} (199{i % 10})|01-Jan-199{i % 10}||http://x|{flags}\n")
    with open(d / "u.data", "w") as f:
        for u in range(1, n_users + 1):
            items = rng.choice(np.arange(1, n_items + 1), per_user, replace=False)
            for i in items:
                rating = 5 if (u + i) % 3 == 0 else int(rng.integers(1, 5))
                f.write(f"{u}\t{i}\t{rating}\t{880000000 + int(rng.integers(0, 10**6))}\n")
