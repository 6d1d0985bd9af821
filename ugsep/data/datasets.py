"""Named datasets for train/eval: (feature spec, train split, test split).

The test split is each user's last share of candidates: by rating time for MovieLens (its last
20%), by a seeded random order for the synthetic day (which has no event time). Training carves
its validation split out of the train split by the same rule (``ugsep.train``), so the
validation rows are never test rows.
"""

from __future__ import annotations

import numpy as np

from ugsep.data.movielens import TEST_SHARE, load_movielens, movielens_spec
from ugsep.data.ranking_data import RankingData, split_last_share
from ugsep.data.synthetic import synthetic_dataset, synthetic_spec
from ugsep.features import FeatureSpec

DATASETS = ("synthetic", "movielens-100k")
SYNTHETIC_USERS = 3000  # ~60k candidates: trains in about a minute on 2 CPU cores


def load_dataset(
    name: str, data_dir: str | None = None, seed: int = 0
) -> tuple[FeatureSpec, RankingData, RankingData]:
    if name == "synthetic":
        data = synthetic_dataset(SYNTHETIC_USERS, seed=seed, max_cands=1000)
        train, test = split_last_share(data, TEST_SHARE, seed + 1)
        return synthetic_spec(), train, test
    if name == "movielens-100k":
        if not data_dir:
            raise ValueError("--data-dir is required for movielens-100k (the folder with u.data)")
        data, test = load_movielens(data_dir)
        return movielens_spec(), data.take(np.flatnonzero(~test)), data.take(np.flatnonzero(test))
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
