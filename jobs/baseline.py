"""The naive one-stage job a team would write without UG-Sep, kept as the speed baseline.

Every candidate is joined with its user and item features and scored by the full forward
(rankmixer: user tokens recomputed per candidate) through Spark's ``predict_batch_udf``. A
sequence model's rows also carry the user's whole sequence (built as the user stage builds it),
so the sequence is encoded once per candidate.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import Column, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import FloatType

from jobs.config import JobConfig
from jobs.contracts import CANDIDATES, ITEM_FEATURES, QUARANTINE, SCORES, USER_FEATURES
from jobs.delta_io import commit_of_run, read_model_input, replace_day
from jobs.events import attach_sequences
from jobs.job_start import start_job
from jobs.report import observe_score_distribution
from jobs.score_stage import day_candidates
from jobs.user_stage import day_sequences
from jobs.validation import REASON, quarantine_rows, require_candidates, tally, user_reason
from ugsep.features import PAD_ID, Field, FieldKind, non_key_columns

BASELINE_TABLE = "baseline_scores"


def padded(f: Field) -> Column:
    """Pad/truncate a list column in SQL so predict_batch_udf sees a fixed tensor shape."""
    head = F.slice(F.coalesce(F.col(f.name), F.array().cast("array<bigint>")), 1, f.max_len)
    pad = F.array_repeat(F.lit(PAD_ID).cast("bigint"), F.greatest(F.lit(f.max_len) - F.size(head), F.lit(0)))
    return F.concat(head, pad).alias(f.name)


def right_aligned(f: Field) -> Column:
    """A sequence column (oldest first, at most max_len events) padded in front to max_len, the
    model's layout; dense event values pad with 0 (the event id field masks them)."""
    pad_value = F.lit(0.0) if f.kind == FieldKind.DENSE else F.lit(PAD_ID).cast("bigint")
    arr = F.col(f.name)
    return F.concat(F.array_repeat(pad_value, F.greatest(F.lit(f.max_len) - F.size(arr), F.lit(0))), arr)


def packed_width(f: Field, sequence: tuple[Field, ...] = ()) -> int:
    return f.max_len if f.kind == FieldKind.MULTI or f in sequence else 1


def pack_features(fields: list[Field], sequence: tuple[Field, ...] = ()) -> Column:
    """All of a candidate's model inputs as one fixed-width array<double> (predict_batch_udf
    takes one tensor column); ids stay exact below 2**53. ``sequence``: which of ``fields`` are
    sequence fields (right-aligned to max_len)."""
    parts = [right_aligned(f) if f in sequence else padded(f) if f.kind == FieldKind.MULTI else F.array(F.col(f.name))
             for f in fields]
    return F.concat(*[p.cast("array<double>") for p in parts])


def make_predict_fn(ckpt: str, device: str, fields: list[Field], n_user: int, version: str = "",
                    sequence: tuple[Field, ...] = ()):
    """``fields``: the packed order, the user's (``n_user``: user and sequence fields) first."""
    def load():
        import torch
        from pyspark import TaskContext

        from jobs.workers import cached_model, pick_device
        from ugsep.data.ranking_data import to_tensors

        ctx = TaskContext.get()
        torch.set_num_threads(ctx.cpus() if ctx is not None else 1)  # as in the two-stage workers
        model, _ = cached_model(ckpt, pick_device(device), version)
        dev = next(model.parameters()).device
        bounds = np.cumsum([0] + [packed_width(f, sequence) for f in fields])

        def predict(x: np.ndarray) -> np.ndarray:  # x: (B, sum of field widths)
            cols = {}
            for f, a, b in zip(fields, bounds[:-1], bounds[1:], strict=True):
                v = x[:, a:b] if f.kind == FieldKind.MULTI or f in sequence else x[:, a]
                cols[f.name] = v.astype(np.float32 if f.kind == FieldKind.DENSE else np.int64)
            users = to_tensors({f.name: cols[f.name] for f in fields[:n_user]}, dev)
            items = to_tensors({f.name: cols[f.name] for f in fields[n_user:]}, dev)
            with torch.inference_mode():
                logits = model(users, items, torch.arange(len(x), device=dev))
            return torch.sigmoid(logits.float()).cpu().numpy()

        return predict

    return load


def run_baseline(spark: SparkSession, cfg: JobConfig, ds: str, ckpt: str | None = None,
                 batch_size: int = 4096) -> dict:
    from pyspark.ml.functions import predict_batch_udf

    ckpt = ckpt or cfg.model
    path = cfg.table_path(BASELINE_TABLE)
    job = start_job(spark, cfg, "baseline-score", ds, ckpt, [(SCORES, path), (QUARANTINE, cfg.table_path(QUARANTINE))])
    ds, spec, version, summary, run_id = job.ds, job.spec, job.version, job.summary, job.run_id
    tagged = events = None
    try:
        with summary.timed("read+validate"):
            cands = read_model_input(spark, cfg, spec, CANDIDATES).where(F.col("ds") == ds)
            items = read_model_input(spark, cfg, spec, ITEM_FEATURES)
            user_cols = non_key_columns(spec.user_fields, "user_id")
            users = read_model_input(spark, cfg, spec, USER_FEATURES).select("user_id", *user_cols)
            found = users.withColumn("_ufound", F.lit(True))
            if spec.sequence_fields:  # the user stage's sequences, attached to every candidate row below
                events = day_sequences(spark, cfg, spec, ds, "baseline")
                summary.events = events.counts().summary()
                found = attach_sequences(found, events.sequences, spec)
            tagged = day_candidates(cands, items, spec).join(found, "user_id", "left")
            # the user checks of the user stage, after the candidate checks, as the score stage orders them
            tagged = tagged.withColumn(REASON, F.coalesce(F.col(REASON), user_reason(spec, "_ufound"))).persist()
            counts = tally(tagged, spec.candidate_fields)
            require_candidates(counts.rows, ds, cfg.source(CANDIDATES).location)
            summary.rows_in, summary.users, summary.quarantine_reasons = counts.rows, counts.users, counts.reasons
        with summary.timed("quarantine"):
            bad = quarantine_rows(tagged, ds, "baseline", list(cands.columns))
            bad_events = summary.events.get("events_quarantined", 0)
            if events is not None:
                bad = bad.unionByName(events.quarantine)
            written = replace_day(bad, cfg.table_path(QUARANTINE), ds, run_id, "stage = 'baseline'",
                                  known_rows=sum(counts.reasons.values()) + bad_events)
            summary.rows_quarantined = written - bad_events
        with summary.timed("score+write"):
            good = tagged.where(F.col(REASON).isNull())
            seq = spec.sequence_fields
            fields = list(spec.user_fields) + list(seq) + list(spec.candidate_fields)
            width = sum(packed_width(f, seq) for f in fields)
            predict = make_predict_fn(ckpt, cfg.device, fields, len(spec.user_fields) + len(seq), version, seq)
            udf = predict_batch_udf(predict, return_type=FloatType(), batch_size=batch_size,
                                    input_tensor_shapes=[[width]])
            scored = good.select("user_id", "item_id", udf(pack_features(fields, seq)).alias("score"))
            rank = F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id"))
            out = scored.select(F.lit(ds).alias("ds"), F.lit(version).alias("model_version"), "user_id",
                                "item_id", "score", rank.cast("int").alias("rank"))
            out, distribution = observe_score_distribution(out)
            summary.rows_out = replace_day(out, path, ds, run_id)
            summary.commits[BASELINE_TABLE] = commit_of_run(spark, path, run_id)
            dist = distribution()
    finally:  # a failed day must not leave its rows cached in a session that goes on
        for df in (tagged, events.tagged if events is not None else None):
            if df is not None:
                df.unpersist()
    return summary.emit(cfg.summary_path("baseline-score", ds), dist)

