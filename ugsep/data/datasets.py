"""Named datasets for train/eval: (feature spec, train split, test split)."""

from __future__ import annotations

import numpy as np

from ugsep.data.movielens import load_movielens, movielens_spec
from ugsep.data.ranking_data import RankingData
from ugsep.data.synthetic import synthetic_dataset, synthetic_spec
from ugsep.features import FeatureSpec

DATASETS = ("synthetic", "movielens-100k")
SYNTHETIC_USERS = 3000  # ~60k candidates: trains in about a minute on 2 CPU cores


def load_dataset(
    name: str, data_dir: str | None = None, seed: int = 0
) -> tuple[FeatureSpec, RankingData, RankingData]:
    if name == "synthetic":
        data = synthetic_dataset(SYNTHETIC_USERS, seed=seed, max_cands=1000)
        test = np.random.default_rng(seed + 1).random(len(data)) < 0.2
        spec = synthetic_spec()
    elif name == "movielens-100k":
        if not data_dir:
            raise ValueError("--data-dir is required for movielens-100k (the folder with u.data)")
        data, test = load_movielens(data_dir)
        spec = movielens_spec()
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    return spec, data.take(np.flatnonzero(~test)), data.take(np.flatnonzero(test))
