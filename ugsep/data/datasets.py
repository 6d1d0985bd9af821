"""Named datasets for train/eval: (feature spec, train split, test split).

The test split is each user's last share of candidates: by rating time for MovieLens (its last
20%), by a seeded random order for the synthetic day (which has no event time). Training carves
its validation split out of the train split by the same rule (``ugsep.train``), so the
validation rows are never test rows.

``sequences=True`` gives the same datasets with behaviour sequences (``seq_len`` events per
user, ``SEQUENCE_LEN`` by default): the sequence spec, the same split rule, and for MovieLens
the very same rows and split.
"""

from __future__ import annotations

import numpy as np

from ugsep.data.movielens import (
    TEST_SHARE,
    load_movielens,
    load_movielens_sequences,
    movielens_sequence_spec,
    movielens_spec,
)
from ugsep.data.ranking_data import RankingData, split_last_share
from ugsep.data.synthetic import (
    synthetic_dataset,
    synthetic_sequence_dataset,
    synthetic_sequence_spec,
    synthetic_spec,
)
from ugsep.features import FeatureSpec

DATASETS = ("synthetic", "movielens-100k")
SYNTHETIC_USERS = 3000  # ~60k candidates: trains in about a minute on 2 CPU cores
SEQUENCE_LEN = 50  # events per user with sequences=True (L), the sequence specs' default


def load_dataset(
    name: str, data_dir: str | None = None, seed: int = 0, sequences: bool = False, seq_len: int = SEQUENCE_LEN
) -> tuple[FeatureSpec, RankingData, RankingData]:
    if name == "synthetic":
        if sequences:
            spec = synthetic_sequence_spec(seq_len)
            data = synthetic_sequence_dataset(SYNTHETIC_USERS, seed=seed, seq_len=seq_len, max_cands=1000)
        else:
            spec, data = synthetic_spec(), synthetic_dataset(SYNTHETIC_USERS, seed=seed, max_cands=1000)
        train, test = split_last_share(data, TEST_SHARE, seed + 1)
        return spec, train, test
    if name == "movielens-100k":
        if not data_dir:
            raise ValueError("--data-dir is required for movielens-100k (the folder with u.data)")
        if sequences:
            spec, (data, test) = movielens_sequence_spec(seq_len), load_movielens_sequences(data_dir, seq_len)
        else:
            spec, (data, test) = movielens_spec(), load_movielens(data_dir)
        return spec, data.take(np.flatnonzero(~test)), data.take(np.flatnonzero(test))
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
