"""`ugsep evaluate-day`: offline metrics of the scores of a range of days against the labels."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pyarrow.compute as pc
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.config import JobConfig, parse_ds
from jobs.contracts import LABELS, LABELS_CONTRACT, SCORES
from jobs.delta_io import read_input, read_table
from jobs.run_report import replacing
from ugsep.metrics import auc, logloss, uauc

KEYS = ["ds", "user_id", "item_id"]
EPS = 1e-7  # scores are clipped to [EPS, 1 - EPS] before their logit: a float32 score may be exactly 0 or 1


def score_logits(score: np.ndarray) -> np.ndarray:
    """Probabilities -> logits (float64), clipped so that a score of 0 or 1 has a finite log loss."""
    p = np.clip(np.asarray(score, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def ranking_metrics(user: np.ndarray, label: np.ndarray, score: np.ndarray) -> dict:
    """AUC, UAUC (``ugsep.metrics``: the plain mean of per-user AUC over users with both labels),
    log loss and calibration of probability ``score``s against 0/1 ``label``s."""
    if not len(label):
        return dict.fromkeys(("auc", "uauc", "uauc_users", "logloss", "mean_score", "label_rate", "calibration"))
    _, inverse = np.unique(user, return_inverse=True)
    positives = np.bincount(inverse, weights=label > 0.5)
    both = int(((positives > 0) & (positives < np.bincount(inverse))).sum())
    mean_score, label_rate = float(np.mean(score, dtype=np.float64)), float(np.mean(label, dtype=np.float64))
    return {"auc": auc(label, score), "uauc": uauc(user, label, score), "uauc_users": both,
            "logloss": logloss(label, score_logits(score)), "mean_score": mean_score, "label_rate": label_rate,
            "calibration": mean_score / label_rate if label_rate else None}


def _finite_or_none(d: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def evaluation_markdown(result: dict) -> str:
    """The evaluation as a Markdown report, beside its JSON like the jobs' run reports."""
    days = result["start"] if result["start"] == result["end"] else f"{result['start']}..{result['end']}"
    keys = ("auc", "uauc", "logloss", "mean_score", "label_rate", "calibration", "rows_joined",
            "scored_without_label", "labels_without_score", "rows_invalid")
    rows = [f"| {k} | {'n/a' if result.get(k) is None else result[k]} |" for k in keys if k in result]
    return "\n".join([f"# evaluate ds={days}", "", f"model_version: `{', '.join(result['model_versions'])}`", "",
                      "| metric | value |", "|---|---:|", *rows, ""])


def evaluate_days(spark: SparkSession, cfg: JobConfig, start: str, end: str) -> dict:
    """Join the scores of days ``start``..``end`` (inclusive) with the labels on (ds, user_id,
    item_id) and report: rows joined, scores without a label and labels without a score, the
    model version(s), AUC, UAUC, log loss and calibration (mean score / label rate).

    The counts come from Spark; the metrics from ``ugsep.metrics`` on the joined rows collected
    to the driver (three numbers a row): meant for offline evaluation of up to a few hundred
    thousand rows (MovieLens-100k is 100k), not of a production day of billions.

    Writes the result as JSON to ``<warehouse>/_summaries/evaluate_<start>[_<end>].json`` and
    prints one line. No scores in the range: ValueError naming the table and the days.
    """
    t0 = time.perf_counter()
    start, end = parse_ds(start, "--ds"), parse_ds(end, "--end")
    if end < start:
        raise ValueError(f"--end {end} is before --ds {start}")
    days = start if start == end else f"{start}..{end}"
    in_range = (F.col("ds") >= start) & (F.col("ds") <= end)
    scores_path, labels_source = cfg.table_path(SCORES), cfg.source(LABELS)
    if not DeltaTable.isDeltaTable(spark, scores_path):
        raise ValueError(f"no scores for ds {days}: there is no scores table at {scores_path}; run `ugsep run` first")
    scores = read_table(spark, SCORES, scores_path).where(in_range).select(*KEYS, "model_version", "score")
    labels = read_input(spark, labels_source, LABELS_CONTRACT).where(in_range)
    joined = scores.withColumn("_s", F.lit(True)).join(labels.withColumn("_l", F.lit(True)), KEYS, "full_outer")
    both = F.col("_s").isNotNull() & F.col("_l").isNotNull()
    counts = joined.agg(
        F.count(F.when(F.col("_s").isNotNull(), 1)).alias("scored"),
        F.count(F.when(both, 1)).alias("joined"),
        F.count(F.when(F.col("_l").isNull(), 1)).alias("scored_without_label"),
        F.count(F.when(F.col("_s").isNull(), 1)).alias("labels_without_score"),
        F.sort_array(F.collect_set("model_version")).alias("model_versions"),
        F.sort_array(F.collect_set(F.when(F.col("_s").isNotNull(), F.col("ds")))).alias("days_scored"),
    ).first()
    if not counts["scored"]:
        raise ValueError(f"no scores for ds {days} in the scores table at {scores_path}; run `ugsep run` first")
    if not counts["joined"]:
        raise ValueError(f"none of the {counts['scored']} scores of ds {days} has a label in the labels table "
                         f"({labels_source.location}): {counts['labels_without_score']} labels in that range")
    rows = joined.where(both).select("user_id", "label", "score").toArrow()
    user = rows["user_id"].to_numpy()
    label = pc.fill_null(rows["label"], np.nan).to_numpy()
    score = pc.fill_null(rows["score"], np.nan).to_numpy()
    valid = np.isfinite(label) & np.isfinite(score)
    result = {
        "job": "evaluate", "start": start, "end": end, "days_scored": list(counts["days_scored"]),
        "model_versions": list(counts["model_versions"]),
        "rows_joined": int(counts["joined"]), "scored_without_label": int(counts["scored_without_label"]),
        "labels_without_score": int(counts["labels_without_score"]),
        "rows_invalid": int((~valid).sum()),  # joined, but a null or non-finite label or score: not in the metrics
        **ranking_metrics(user[valid], label[valid], score[valid]),
        "scores_table": scores_path, "labels_table": labels_source.location,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    result = _finite_or_none(result)
    path = cfg.summary_path("evaluate", start if start == end else f"{start}_{end}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path.with_suffix(".md")) as tmp:
        tmp.write_text(evaluation_markdown(result))
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    print(f"evaluate ds={days} rows={result['rows_joined']} auc={fmt(result['auc'])} uauc={fmt(result['uauc'])} "
          f"logloss={fmt(result['logloss'])} calibration={fmt(result['calibration'])} "
          f"scored_without_label={result['scored_without_label']} "
          f"labels_without_score={result['labels_without_score']} "
          f"model_version={','.join(result['model_versions'])} seconds={result['seconds']} summary={path}",
          flush=True)
    return result
