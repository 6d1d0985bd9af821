"""Stage 1: encode each user of the day once and write user_state for that ds. A model that reads
behaviour sequences gets each user's sequence as of ds from the user_events table (``jobs.events``)."""

from __future__ import annotations

from functools import partial

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import JobConfig, day_start
from jobs.contracts import CANDIDATES, ITEM_FEATURES, QUARANTINE, USER_EVENTS, USER_FEATURES, USER_STATE
from jobs.delta_io import commit_of_run, read_model_input, replace_day
from jobs.events import EventSequences, attach_sequences, build_sequences, sequence_sources
from jobs.job_start import start_job
from jobs.model_stage import map_in_arrow_with_model
from jobs.validation import REASON, quarantine_rows, require_candidates, tag_user_rows, tally
from jobs.workers import STATE_SCHEMA, encode_user_batches
from ugsep.features import FeatureSpec, non_key_columns

OUTPUTS = (USER_STATE, QUARANTINE)  # the tables this stage writes


def day_users(candidates: DataFrame, user_features: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Distinct users of the day's candidates (any rows with their user_id) joined with their
    features, tagged with a reason if bad."""
    users = candidates.where(F.col("user_id").isNotNull()).select("user_id").distinct()
    feats = user_features.select("user_id", *non_key_columns(spec.user_fields, "user_id"))
    return tag_user_rows(users.join(feats.withColumn("_found", F.lit(True)), "user_id", "left"), spec)


def day_sequences(spark: SparkSession, cfg: JobConfig, spec: FeatureSpec, ds: str, stage: str = "user"
                  ) -> EventSequences:
    """The plan of the users' sequences as of ``ds``: events of partitions up to ds (an event's
    partition is its day, so later partitions hold no event before ds), item features where a
    sequence field reads one; bad events quarantined under ``stage``. ``tagged`` comes persisted
    (it feeds the counts, the quarantine and the sequences): the caller unpersists it."""
    events = read_model_input(spark, cfg, spec, USER_EVENTS).where(F.col("ds") <= ds)
    needs_items = any(s.table == ITEM_FEATURES for s in sequence_sources(spec))
    items = read_model_input(spark, cfg, spec, ITEM_FEATURES) if needs_items else None
    plan = build_sequences(events, ds, spec, items, stage)
    plan.tagged.persist()
    return plan


def encode_users_df(users: DataFrame, cfg: JobConfig, ckpt: str, version: str) -> DataFrame:
    """(user_id, user fields) -> (user_id, state) through the encode worker, users clustered by id,
    ``users_per_batch`` users a model call, with the checkpoint of model_version ``version``."""
    parts = cfg.partitions or users.sparkSession.sparkContext.defaultParallelism
    worker = partial(encode_user_batches, users_per_call=cfg.users_per_batch, version=version)
    return map_in_arrow_with_model(users.repartition(parts, "user_id"), worker, STATE_SCHEMA, cfg, ckpt)


def run_user_stage(spark: SparkSession, cfg: JobConfig, ds: str, candidates: DataFrame | None = None) -> dict:
    """Encode the day's users and write their user_state. ``candidates``: rows holding the user_id
    of every candidate of the day if the caller has them already (`ugsep run`: the cached day's
    per-user counts), else the candidates are read here."""
    job = start_job(spark, cfg, "user-stage", ds, cfg.model, [(c, cfg.table_path(c)) for c in OUTPUTS], unit="users")
    ds, spec, version, summary, run_id = job.ds, job.spec, job.version, job.summary, job.run_id
    tagged = events = None
    try:
        with summary.timed("read"):
            if candidates is None:
                candidates = read_model_input(spark, cfg, spec, CANDIDATES).where(F.col("ds") == ds)
            feats = read_model_input(spark, cfg, spec, USER_FEATURES)
            tagged = day_users(candidates, feats, spec).persist()
            counts = tally(tagged, spec.user_fields)
            require_candidates(counts.rows, ds, cfg.source(CANDIDATES).location)
            summary.rows_in, summary.quarantine_reasons = counts.rows, counts.reasons
            summary.unknown_categorical = counts.unknown_categorical
            if spec.sequence_fields:
                events = day_sequences(spark, cfg, spec, ds)
                event_counts = events.counts()
                summary.events = event_counts.summary()
        with summary.timed("quarantine"):
            bad = quarantine_rows(tagged, ds, "user", ["user_id"])
            bad_events = sum(event_counts.quarantined.values()) if events is not None else 0
            if events is not None:  # bad events go to quarantine beside bad users, in one write
                bad = bad.unionByName(events.quarantine)
            written = replace_day(bad, cfg.table_path(QUARANTINE), ds, run_id, "stage = 'user'",
                                  known_rows=sum(counts.reasons.values()) + bad_events)
            summary.rows_quarantined = written - bad_events  # users; the events are counted in summary.events
            good = tagged.where(F.col(REASON).isNull()).drop(REASON, "_found")
            if events is not None:  # a user without events gets an empty sequence
                good = attach_sequences(good, events.sequences, spec)
        with summary.timed("encode+write"):
            state = encode_users_df(good, cfg, cfg.model, version).select(
                F.lit(ds).alias("ds"), F.lit(version).alias("model_version"), "user_id", "state",
                F.current_timestamp().alias("created_at"),
                F.timestamp_seconds(F.lit(day_start(ds))).alias("event_ts"))
            summary.rows_out = summary.users = replace_day(state, cfg.table_path(USER_STATE), ds, run_id)
            summary.commits[USER_STATE.name] = commit_of_run(spark, cfg.table_path(USER_STATE), run_id)
    finally:  # a failed day must not leave its users cached in a session that goes on (backfill)
        for df in (tagged, events.tagged if events is not None else None):
            if df is not None:
                df.unpersist()
    return summary.emit(cfg.summary_path("user-stage", ds))

