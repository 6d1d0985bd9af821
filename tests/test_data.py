import numpy as np
import pytest
from movielens_fixture import write_movielens_fixture

from ugsep.data.datasets import load_dataset
from ugsep.data.movielens import load_movielens
from ugsep.data.synthetic import generate_day
from ugsep.metrics import auc


def test_synthetic_is_deterministic_and_skewed():
    a, b = generate_day(300, seed=5, max_cands=1200), generate_day(300, seed=5, max_cands=1200)
    for k in a.candidates:
        np.testing.assert_array_equal(a.candidates[k], b.candidates[k])
    counts = np.bincount(a.candidates["user_id"])
    assert counts.min() == 1 and counts.max() == 1200
    pairs = a.candidates["user_id"] * 10**6 + a.candidates["item_id"]
    assert len(np.unique(pairs)) == len(pairs)


def test_planted_interaction_matters():
    """A predictor without the user-item term is visibly worse than the true logit."""
    c = generate_day(3000, seed=1).candidates
    assert auc(c["label"], c["true_logit"]) - auc(c["label"], c["true_additive"]) > 0.05


def test_movielens_reader_and_split(tmp_path):
    write_movielens_fixture(tmp_path, n_users=6, per_user=10)
    data, test = load_movielens(tmp_path)
    assert len(data) == 60 and test.sum() == 12  # 20% of each user's 10 ratings
    # the test rows are each user's latest by timestamp
    ts = np.array([int(line.split("\t")[3]) for line in (tmp_path / "u.data").read_text().splitlines()])
    for u in range(data.n_users):
        mine = data.user_row == u
        assert ts[mine & test].min() >= ts[mine & ~test].max()
    assert set(np.unique(data.items["genres"])) <= set(range(-1, 19))
    spec, train, held = load_dataset("movielens-100k", str(tmp_path))
    assert len(train) == 48 and len(held) == 12


def test_movielens_missing_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_movielens(tmp_path)
