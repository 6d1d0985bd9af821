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


GENRE_SHARE = np.array([.01, .15, .08, .03, .07, .30, .03, .01, .43, .01, .01, .06, .03, .03, .14, .06, .15, .04, .02])
OCCUPATIONS = ["student", "other", "educator", "engineer", "programmer", "administrator", "writer", "librarian",
               "technician", "executive", "healthcare", "artist", "entertainment", "marketing", "scientist",
               "retired", "lawyer", "salesman", "none", "homemaker", "doctor"]


def write_movielens_like(d: Path, n_users: int = 943, n_items: int = 1682, n_ratings: int = 100_000,
                         seed: int = 0, rank: int = 8) -> None:
    """A MovieLens-100k-sized dataset with the real one's shape, written independently of ugsep's own
    generator: heavy-tailed user activity (at least 20 ratings each) and item popularity, user and
    item biases that dominate a weak low-rank taste signal, genre-driven tastes, users choosing what
    they expect to like, each user's ratings spread over a few sessions with a drift in their bias
    over time, and about 55% of ratings at 4 stars or more."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    age = np.clip(rng.normal(33, 12, n_users), 7, 73).astype(int)
    male = rng.random(n_users) < 0.71
    occ = rng.choice(len(OCCUPATIONS), n_users, p=np.r_[0.2, 0.1, 0.1, 0.07, 0.07, 0.08, np.full(15, 0.38 / 15)])
    with open(d / "u.user", "w", encoding="latin-1") as f:
        for u in range(n_users):
            sex = "M" if male[u] else "F"
            f.write(f"{u + 1}|{age[u]}|{sex}|{OCCUPATIONS[occ[u]]}|{rng.integers(1000, 99999):05d}\n")

    genres = rng.random((n_items, 19)) < GENRE_SHARE
    genres[~genres.any(1), 8] = True  # every film has a genre; drama is the common one
    year = np.where(rng.random(n_items) < 0.8, rng.integers(1990, 1999, n_items), rng.integers(1930, 1990, n_items))
    with open(d / "u.item", "w", encoding="latin-1") as f:
        for i in range(n_items):
            flags = "|".join(str(int(x)) for x in genres[i])
            f.write(f"{i + 1}|Film {i + 1} ({year[i]})|01-Jan-{year[i]}||http://example.org/{i + 1}|{flags}\n")

    # latent tastes: a user's genre taste plus free factors; an item's factors include its genres
    genre_vec = rng.normal(0, 0.35, (19, rank))
    q = rng.normal(0, 0.25, (n_items, rank)) + genres @ genre_vec / np.maximum(genres.sum(1, keepdims=True), 1)
    p = rng.normal(0, 0.6, (n_users, rank)) + 0.3 * rng.normal(0, 1, (21, rank))[occ]
    pop = rng.pareto(2.0, n_items) + 0.02
    b_item = rng.normal(0, 0.45, n_items) + 0.25 * (np.log(pop) - np.log(pop).mean())
    b_user = rng.normal(0, 0.45, n_users) + 0.01 * (age - 33)
    drift = rng.normal(0, 0.3, n_users)  # change of a user's bias from first to last rating

    activity = np.maximum(20, rng.lognormal(0, 1.0, n_users) * n_ratings / n_users / np.exp(0.5)).astype(int)
    activity = np.minimum(activity, n_items // 2)
    start, span = 874_700_000, 16_000_000  # about seven months of seconds
    with open(d / "u.data", "w") as f:
        for u in range(n_users):
            affinity = q @ p[u] + b_item
            w = pop * np.exp(1.2 * affinity)
            items = rng.choice(n_items, activity[u], replace=False, p=w / w.sum())
            t_pos = np.sort(rng.random(len(items)))  # when in the user's history each rating falls
            sessions = rng.integers(1, 6)
            t0 = start + rng.integers(0, span // 2)
            t = t0 + (np.floor(t_pos * sessions) * rng.integers(86_400, 4_000_000) + t_pos * 3_600).astype(int)
            mean = 2.7 + b_user[u] + drift[u] * (t_pos - 0.5) + affinity[items]
            rating = np.clip(np.rint(mean + rng.normal(0, 0.95, len(items))), 1, 5).astype(int)
            for i, r, ts in zip(items, rating, t, strict=True):
                f.write(f"{u + 1}\t{i + 1}\t{r}\t{ts}\n")
