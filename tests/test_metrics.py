import numpy as np
import pytest

from ugsep.metrics import auc, logloss, uauc


def _auc_pairs(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_auc_matches_pairwise_definition_with_ties(rng):
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    assert auc(y, s) == pytest.approx(_auc_pairs(y, s))


def test_auc_edges():
    assert auc(np.array([1, 0]), np.array([0.9, 0.1])) == 1.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.9, 0.1])))


def test_uauc_skips_single_class_users():
    user = np.array([1, 1, 2, 2, 3])
    y = np.array([1, 0, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    assert uauc(user, y, s) == pytest.approx(0.5)


def test_logloss_matches_naive(rng):
    y, z = rng.integers(0, 2, 100), rng.normal(size=100) * 3
    p = 1 / (1 + np.exp(-z))
    assert logloss(y, z) == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
