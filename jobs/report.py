"""Read-side helpers for people looking at a day's output."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.contracts import SCORES
from jobs.config import JobConfig
from jobs.delta_io import read_table


def top_items(spark: SparkSession, cfg: JobConfig, ds: str, n_users: int, k: int) -> dict[int, list]:
    """{user_id: [(item_id, score), ...]} for the first ``n_users`` users (by id) of the day."""
    scores = read_table(spark, SCORES, cfg.table_path(SCORES)).where(F.col("ds") == ds)
    users = [r[0] for r in scores.select("user_id").distinct().orderBy("user_id").limit(n_users).collect()]
    rows = (scores.where(F.col("user_id").isin(users) & (F.col("rank") <= k))
            .orderBy("user_id", "rank").select("user_id", "item_id", "score").collect())
    out: dict[int, list] = {u: [] for u in users}
    for r in rows:
        out[r["user_id"]].append((r["item_id"], r["score"]))
    return out
