"""Read-side helpers for people looking at a day's output."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.contracts import SCORES
from jobs.delta_io import read_table
from jobs.validation import EmptyDayError


def top_items(spark: SparkSession, cfg: JobConfig, ds: str, n_users: int, k: int) -> dict[int, list]:
    """{user_id: [(item_id, score), ...]} for the first ``n_users`` users (by id) of the day.
    Raises EmptyDayError when the day has no scores."""
    scores = read_table(spark, SCORES, cfg.table_path(SCORES)).where(F.col("ds") == ds)
    users = [r[0] for r in scores.select("user_id").distinct().orderBy("user_id").limit(n_users).collect()]
    if not users and n_users > 0:
        raise EmptyDayError(f"no scores for ds={ds} in {cfg.table_path(SCORES)}; "
                            f"run `ugsep score-stage --ds {ds}` (or `ugsep run --ds {ds}`) first")
    rows = (scores.where(F.col("user_id").isin(users) & (F.col("rank") <= k))
            .orderBy("user_id", "rank").select("user_id", "item_id", "score").collect())
    out: dict[int, list] = {u: [] for u in users}
    for r in rows:
        out[r["user_id"]].append((r["item_id"], r["score"]))
    return out


SCORE_DISTRIBUTION_KEYS = ("score_histogram", "score_quantiles")
PROBS = (0.5, 0.9, 0.99)  # the quantiles reported besides min and max


def _distribution_exprs(bins: int) -> list[Column]:
    score = F.col("score")
    bin_of = F.least(F.floor(score * bins), F.lit(bins - 1))  # a score of exactly 1.0 goes in the last bin
    in_range = score.between(0.0, 1.0)  # false for null and NaN
    return [F.count(F.lit(1)).alias("n"), F.min(score).alias("lo"), F.max(score).alias("hi"),
            F.percentile_approx(score, list(PROBS)).alias("ps"),
            *[F.count_if(in_range & (bin_of == i)).alias(f"bin{i}") for i in range(bins)]]


def _distribution(values: dict, bins: int) -> dict:
    n, lo, hi, ps = values["n"], values["lo"], values["hi"], values["ps"] or [None] * len(PROBS)
    counts = [int(values[f"bin{i}"]) for i in range(bins)]
    as_float = lambda v: None if v is None else round(float(v), 6)
    return {
        "score_histogram": {"edges": [round(i / bins, 6) for i in range(bins + 1)], "counts": counts,
                            "out_of_range": n - sum(counts)},
        "score_quantiles": {"min": as_float(lo), "p50": as_float(ps[0]), "p90": as_float(ps[1]),
                            "p99": as_float(ps[2]), "max": as_float(hi)},
    }


def observe_score_distribution(scores: DataFrame, bins: int = 20) -> tuple[DataFrame, Callable[[], dict]]:
    """``scores`` with its histogram and quantiles computed while its rows are written (no second pass
    over the table); call the returned function after the write. Scores are sigmoid probabilities, so
    the bins are fixed over [0, 1]; p50/p90/p99 are Spark's percentile_approx (rank error at most
    1/10,000 of the rows), min and max are exact."""
    obs = Observation("score_distribution")
    return scores.observe(obs, *_distribution_exprs(bins)), lambda: _distribution(obs.get, bins)
