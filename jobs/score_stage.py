"""Stage 2: stream each user's candidates in user order with the user's state once, score, rank, write scores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.contracts import (
    CANDIDATES,
    ITEM_FEATURES,
    QUARANTINE,
    SCORES,
    USER_FEATURES,
    USER_STATE,
    candidates_contract,
)
from jobs.delta_io import commit_of_run, read_model_input, read_table, replace_day
from jobs.faults import score_holds
from jobs.job_start import JobStart, start_job
from jobs.model_stage import map_in_arrow_with_model
from jobs.report import observe_score_distribution
from jobs.score_stream import user_ordered_rows
from jobs.validation import (
    REASON,
    count_per_user,
    quarantine_rows,
    require_candidates,
    tag_candidate_rows,
    tally_per_user,
    user_reason,
)
from jobs.workers import SCORE_SCHEMA, score_user_rows
from ugsep.features import FeatureSpec, FieldKind, non_key_columns

OUTPUTS = (SCORES, QUARANTINE)  # the tables this stage writes


class UserStateError(RuntimeError):
    """User state is missing or was written by another model version."""


def day_candidates(candidates: DataFrame, item_features: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Candidates joined with item features, each tagged with the reason it cannot be scored (or null)."""
    item_cols = non_key_columns(spec.item_fields, "item_id")
    items = F.broadcast(item_features.select("item_id", *item_cols).withColumn("_found", F.lit(True)))
    return tag_candidate_rows(candidates.join(items, "item_id", "left"), spec)


def check_state_version(state: DataFrame, version: str, ds: str) -> None:
    """Refuse state of another model version (reads the model_version column only)."""
    other = state.where(F.col("model_version") != version).groupBy("model_version").count().collect()
    if other:
        found = ", ".join(f"{r['model_version']} ({r['count']} users)" for r in other)
        raise UserStateError(f"user_state for ds={ds} was written by {found}, but the loaded model is "
                             f"{version}; rerun the user stage with this model")


def with_state_flag(rows: DataFrame, state: DataFrame) -> DataFrame:
    """Mark rows (candidates, or their per-user counts) whose user has state (``_has_state``).
    The day's user ids are broadcast (8 bytes a user): the planner, which sizes the state table
    by its files, would otherwise sort and merge every candidate."""
    flag = state.select("user_id").withColumn("_has_state", F.lit(True))
    return rows.join(F.broadcast(flag), "user_id", "left")


def with_reasons_of_stateless_users(rows: DataFrame, feats: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Attach user features to state-flagged rows (candidates, or their per-user counts); for
    users without state a missing or non-finite feature row is a reason to quarantine, exactly
    as in the user stage (checked after every candidate check)."""
    user_cols = non_key_columns(spec.user_fields, "user_id")
    joined = rows.join(feats.select("user_id", *user_cols).withColumn("_ufound", F.lit(True)), "user_id", "left")
    stateless_reason = F.when(F.col("_has_state").isNull(), user_reason(spec, "_ufound"))
    return joined.withColumn(REASON, F.coalesce(F.col(REASON), stateless_reason)).drop("_ufound")


def cached_columns(spec: FeatureSpec) -> list[str]:
    """What the cached day keeps of a tagged candidate: its own columns, the categorical item
    fields the tally counts, the reason. The item features for scoring are joined again."""
    cats = [f.name for f in spec.candidate_fields if f.kind == FieldKind.CATEGORICAL and f.name != "item_id"]
    own = candidates_contract(spec).names
    return [*own, *[c for c in cats if c not in own], REASON]


@dataclass(frozen=True)
class CheckedDay:
    """A day's candidates read and checked once (``cached_day``), for one or both stages."""

    candidates: DataFrame  # tagged (``cached_columns``), clustered by user
    items: DataFrame  # the item features they were checked against
    per_user: DataFrame  # ``count_per_user`` of the candidates: the day's users and the tally's counts

    def with_item_features(self, good: DataFrame, spec: FeatureSpec) -> DataFrame:
        """Good candidates with every item field, from the same cached item features."""
        missing = [f.name for f in spec.item_fields if f.name not in good.columns]
        return good.join(F.broadcast(self.items.select("item_id", *missing)), "item_id", "left")


@contextmanager
def cached_day(spark: SparkSession, cfg: JobConfig, ds: str, spec: FeatureSpec) -> Iterator[CheckedDay]:
    """The day's candidates checked against the item features (``day_candidates``), clustered by
    user, narrow rows persisted while the block runs: `ugsep run` reads them once for both stages."""
    cands = read_model_input(spark, cfg, spec, CANDIDATES).where(F.col("ds") == ds)
    items = read_model_input(spark, cfg, spec, ITEM_FEATURES).persist()
    # cluster by user once: the duplicate check, the grouping and the state join reuse it
    cands = cands.repartition(cfg.partitions or spark.sparkContext.defaultParallelism, "user_id")
    tagged = day_candidates(cands, items, spec).select(*cached_columns(spec)).persist()
    per_user = count_per_user(tagged, spec.candidate_fields).persist()
    try:
        yield CheckedDay(tagged, items, per_user)
    finally:
        per_user.unpersist()
        tagged.unpersist()
        items.unpersist()


def run_score_stage(spark: SparkSession, cfg: JobConfig, ds: str, compute_missing: bool = False,
                    day: CheckedDay | None = None) -> dict:
    """Score the day's candidates with the day's user state and write the day's scores.
    ``day``: the day's ``cached_day`` if the caller holds it, else read here."""
    job = start_job(spark, cfg, "score-stage", ds, cfg.model, [(c, cfg.table_path(c)) for c in OUTPUTS])
    if day is not None:
        return _score_day(spark, cfg, job, day, compute_missing)
    with cached_day(spark, cfg, job.ds, job.spec) as own:
        return _score_day(spark, cfg, job, own, compute_missing)


def _score_day(spark: SparkSession, cfg: JobConfig, job: JobStart, day: CheckedDay, compute_missing: bool) -> dict:
    ds, spec, version, summary, run_id = job.ds, job.spec, job.version, job.summary, job.run_id
    with summary.timed("read+validate"):
        state = read_table(spark, USER_STATE, cfg.table_path(USER_STATE)).where(F.col("ds") == ds)
        check_state_version(state, version, ds)
        # counted on the per-user counts, not the candidates: the state flag joins a row per user
        users, cands = with_state_flag(day.per_user, state), day.candidates
        counts = tally_per_user(users, spec.candidate_fields)
        require_candidates(counts.rows, ds, cfg.source(CANDIDATES).location)
        if counts.stateless_users:
            # users without state whose features are missing or bad were quarantined by the user
            # stage: their candidates are quarantined with the same reason. The rest need the
            # user stage, or --compute-missing (encoded here from their features).
            feats = read_model_input(spark, cfg, spec, USER_FEATURES)
            users = with_reasons_of_stateless_users(users, feats, spec)
            cands = with_reasons_of_stateless_users(with_state_flag(cands, state), feats, spec)
            counts = tally_per_user(users, spec.candidate_fields)
        if counts.stateless_users and compute_missing and spec.sequence_fields:
            raise UserStateError(f"{counts.stateless_users} users of ds={ds} have no user_state, and --compute-missing "
                                 "cannot encode them here: a sequence model reads their events, which the user "
                                 "stage builds; run `ugsep user-stage` for this ds first")
        if counts.stateless_users and not compute_missing:
            sample = [r[0] for r in users.where(F.col(REASON).isNull() & F.col("_has_state").isNull())
                      .select("user_id").limit(5).collect()]
            raise UserStateError(f"{counts.stateless_users} users of ds={ds} have valid features but no user_state "
                                 f"(e.g. {sample}); run `ugsep user-stage` for this ds first, or pass "
                                 "--compute-missing")
        summary.rows_in, summary.users = counts.rows, counts.users
        summary.quarantine_reasons, summary.unknown_categorical = counts.reasons, counts.unknown_categorical
        summary.users_computed_on_the_fly = counts.stateless_users
        good = day.with_item_features(cands.where(F.col(REASON).isNull()).drop(REASON), spec)
    with summary.timed("quarantine"):
        bad = quarantine_rows(cands, ds, "score", candidates_contract(spec).names)
        summary.rows_quarantined = replace_day(bad, cfg.table_path(QUARANTINE), ds, run_id, "stage = 'score'",
                                             known_rows=sum(counts.reasons.values()))
    with summary.timed("score+write"):
        user_cols = non_key_columns(spec.user_fields, "user_id") if counts.stateless_users else []
        rows = user_ordered_rows(good, state).select(
            "user_id", "state", *[f.name for f in spec.candidate_fields], *user_cols)
        # the worker cuts the Arrow batches into model calls of whole users
        worker = partial(score_user_rows, max_candidates=cfg.max_candidates_per_call, version=version,
                         holds=score_holds())
        scores = map_in_arrow_with_model(rows, worker, SCORE_SCHEMA, cfg, cfg.model).select(
            F.lit(ds).alias("ds"), F.lit(version).alias("model_version"), "user_id", "item_id", "score", "rank")
        scores, distribution = observe_score_distribution(scores)
        summary.rows_out = replace_day(scores, cfg.table_path(SCORES), ds, run_id)
        summary.commits[SCORES.name] = commit_of_run(spark, cfg.table_path(SCORES), run_id)
        dist = distribution()
    return summary.emit(cfg.summary_path("score-stage", ds), dist)
