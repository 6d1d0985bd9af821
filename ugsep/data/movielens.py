"""MovieLens-100k from its public files (u.data, u.user, u.item) in ``data_dir``.

Label = rating >= 4. Test split: each user's last 20% of ratings by timestamp (ties by item
id). User side: user id, age bucket, gender, occupation, zip prefix. Item side: item id,
release year, genres (multi-valued).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ugsep.data.ranking_data import RankingData
from ugsep.features import PAD_ID, FeatureSpec, Field, stable_id

N_GENRES = 19
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])


def movielens_spec() -> FeatureSpec:
    return FeatureSpec(
        user_fields=(
            Field("user_id", "categorical", buckets=2000, dim=16),
            Field("age_bucket", "categorical", buckets=len(AGE_EDGES) + 1, dim=4),
            Field("gender", "categorical", buckets=4, dim=4),
            Field("occupation", "categorical", buckets=64, dim=8),
            Field("zip_prefix", "categorical", buckets=128, dim=8),
        ),
        item_fields=(
            Field("item_id", "categorical", buckets=4000, dim=16),
            Field("release_year", "categorical", buckets=128, dim=8),
            Field("genres", "multi", buckets=N_GENRES, dim=8, max_len=N_GENRES),
        ),
    )


def _read(path: Path, sep: str) -> list[list[str]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (expected the MovieLens-100k files in {path.parent})")
    with open(path, encoding="latin-1") as f:
        return [line.rstrip("\n").split(sep) for line in f if line.strip()]


def load_movielens(data_dir: str | Path) -> tuple[RankingData, np.ndarray]:
    """All ratings as RankingData, plus a boolean test mask (per-user last 20% by time)."""
    d = Path(data_dir)
    ratings = np.array([[int(x) for x in r[:4]] for r in _read(d / "u.data", "\t")], dtype=np.int64)
    urows = _read(d / "u.user", "|")
    irows = _read(d / "u.item", "|")

    users = {
        "user_id": np.array([int(r[0]) for r in urows], dtype=np.int64),
        "age_bucket": np.searchsorted(AGE_EDGES, [int(r[1]) for r in urows], side="right"),
        "gender": stable_id([r[2] for r in urows]),
        "occupation": stable_id([r[3] for r in urows]),
        "zip_prefix": stable_id([r[4][:2] for r in urows]),
    }
    item_ids = np.array([int(r[0]) for r in irows], dtype=np.int64)
    years = np.array([int(r[2][-4:]) if len(r[2]) >= 4 else 0 for r in irows], dtype=np.int64)
    flags = np.array([[int(x) for x in r[5 : 5 + N_GENRES]] for r in irows], dtype=bool)
    genres = np.where(flags, np.arange(N_GENRES), PAD_ID)
    genres = -np.sort(-genres, axis=1)  # real genre ids first, padding last

    user_pos = _lookup(users["user_id"], ratings[:, 0], "user")
    item_pos = _lookup(item_ids, ratings[:, 1], "item")
    data = RankingData(
        users={k: np.asarray(v, dtype=np.int64) for k, v in users.items()},
        items={"item_id": ratings[:, 1], "release_year": years[item_pos], "genres": genres[item_pos]},
        user_row=user_pos,
        label=(ratings[:, 2] >= 4).astype(np.float32),
    )
    return data, _last_fraction_by_time(ratings[:, 0], ratings[:, 3], ratings[:, 1], 0.2)


def _lookup(keys: np.ndarray, queries: np.ndarray, what: str) -> np.ndarray:
    index = {int(k): i for i, k in enumerate(keys)}
    try:
        return np.array([index[int(q)] for q in queries], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"u.data references {what} {e.args[0]} missing from u.{what}") from None


def _last_fraction_by_time(user: np.ndarray, ts: np.ndarray, item: np.ndarray, frac: float) -> np.ndarray:
    order = np.lexsort((item, ts, user))  # by user, then time, then item id
    u = user[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    rank = np.arange(len(u)) - np.repeat(starts, counts)  # position within the user
    n_test = np.floor(counts * frac + 0.5).astype(np.int64)
    test = np.zeros(len(u), dtype=bool)
    test[order] = rank >= np.repeat(counts - n_test, counts)
    return test
