"""Ranking metrics in numpy: AUC (ties averaged), user-averaged AUC, log loss."""

from __future__ import annotations

import numpy as np


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN if only one class is present."""
    label = np.asarray(label) > 0.5
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank within each run of equal scores
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def uauc(user: np.ndarray, label: np.ndarray, score: np.ndarray) -> float:
    """Mean of per-user AUC over users that have both a positive and a negative."""
    order = np.argsort(user, kind="stable")
    u, y, s = np.asarray(user)[order], np.asarray(label)[order], np.asarray(score)[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    vals = [auc(y[a:b], s[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def logloss(label: np.ndarray, logit: np.ndarray) -> float:
    """Binary cross-entropy from logits, computed stably."""
    y, z = np.asarray(label, dtype=np.float64), np.asarray(logit, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
