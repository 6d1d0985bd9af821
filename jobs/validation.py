"""Row checks as pure DataFrame -> DataFrame steps: every bad row gets a reason, none vanish."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ugsep.features import FeatureSpec, Field, FieldKind

REASON = "_reason"
KEYS = ("user_id", "item_id")


class EmptyDayError(ValueError):
    """The day has no candidates: writing would replace the day's output with nothing."""


def require_candidates(rows: int, ds: str, table_path: str) -> None:
    """Fail before any write when ds has no candidates: more likely a day not landed yet, a
    dropped partition or a wrong --ds than a real empty day, and its old output would be wiped."""
    if rows == 0:
        raise EmptyDayError(f"no candidates for ds={ds} in {table_path}: nothing written, the day's existing "
                            "output is kept (has the day's data landed? is --ds right?)")


def first_failure(checks: list[tuple[Column, str | Column]]) -> Column:
    """The reason of the first failing check, or null when the row is good."""
    return reduce(lambda acc, c: acc.when(c[0], F.lit(c[1])), checks[1:],
                  F.when(checks[0][0], F.lit(checks[0][1]))).otherwise(F.lit(None).cast("string"))


def value_checks(fields: tuple[Field, ...]) -> list[tuple[Column, str]]:
    """A dense value must be there and finite, a categorical one there, an id list free of null
    ids: the model has no meaning for null, NaN or inf, and a null id would be scored as id 0, a
    real id. (Keys have their own checks.)"""
    checks = []
    for f in fields:
        c = F.col(f.name)
        if f.kind == FieldKind.DENSE:
            checks += [(c.isNull(), f"null_{f.name}"),
                       (F.isnan(c) | (F.abs(c) == float("inf")), f"non_finite_{f.name}")]
        elif f.kind == FieldKind.CATEGORICAL and f.name not in KEYS:
            checks.append((c.isNull(), f"null_{f.name}"))
        elif f.kind == FieldKind.MULTI:  # a null list is an empty one; a null id inside is no id at all
            checks.append((F.exists(c, lambda x: x.isNull()), f"null_in_{f.name}"))
    return checks


def user_reason(spec: FeatureSpec, found: str = "_found") -> Column:
    """Why a user's joined feature row (``found`` marks one) cannot be used, or null: missing, or a bad value."""
    return first_failure([(F.col(found).isNull(), "missing_user_features"), *value_checks(spec.user_fields)])


def tag_user_rows(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Users joined with their features (``_found`` marks a feature row) get a reason column."""
    return df.withColumn(REASON, user_reason(spec))


def tag_candidate_rows(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Candidates joined with item features: null keys, duplicates, missing items, bad values.
    Of duplicate (user, item) rows one is kept: a row whose values pass every check before one
    that fails one (so a valid candidate is never lost to an invalid twin), then the smallest
    context values (in spec order, nulls last). In each user's rows in that order, a row is a
    duplicate when the one before it has the same item: one window per user, not per pair."""
    context = [F.col(f.name).asc_nulls_last() for f in spec.context_fields]
    invalid = first_failure(value_checks(spec.candidate_fields)).isNotNull() if spec.candidate_fields else F.lit(False)
    by_item = Window.partitionBy("user_id").orderBy("item_id", invalid, *context)
    duplicate = F.coalesce(F.lag("item_id").over(by_item) == F.col("item_id"), F.lit(False))
    checks = [
        (F.col("user_id").isNull(), "null_user_id"),
        (F.col("item_id").isNull(), "null_item_id"),
        (F.col("_dup"), "duplicate_candidate"),
        (F.col("_found").isNull(), "missing_item_features"),
        *value_checks(spec.candidate_fields),
    ]
    return df.withColumn("_dup", duplicate).withColumn(REASON, first_failure(checks)).drop("_dup")


def quarantine_rows(tagged: DataFrame, ds: str, stage: str, columns: list[str]) -> DataFrame:
    """Bad rows in the quarantine table's shape: the row itself kept as JSON."""
    return tagged.where(F.col(REASON).isNotNull()).select(
        F.lit(ds).alias("ds"), F.lit(stage).alias("stage"), F.col(REASON).alias("reason"),
        F.to_json(F.struct(*columns)).alias("row"))


@dataclass
class Tally:
    """What one pass over tagged rows tells the summary."""

    rows: int  # all rows, good and bad
    reasons: dict[str, int]  # bad rows per reason
    unknown_categorical: dict[str, int]  # good rows with a value outside the field's buckets
    users: int  # distinct users among the good rows
    stateless_users: int  # distinct good users without user state (score stage, --compute-missing)


def count_per_user(tagged: DataFrame, fields: tuple[Field, ...]) -> DataFrame:
    """Rows per (reason, user) with their categorical values outside the field's buckets: the one
    pass over the rows that ``tally`` needs. On rows clustered by user it needs no shuffle, and
    the result is small (a row per user and reason), so a stage can join it cheaply (user state)."""
    per_user = [F.count(F.lit(1)).alias("_n")]
    per_user += [F.sum(((F.col(f.name) < 0) | (F.col(f.name) >= f.buckets)).cast("long")).alias(f.name)
                 for f in _tallied_categoricals(fields)]
    return tagged.groupBy(REASON, "user_id").agg(*per_user)


def tally(tagged: DataFrame, fields: tuple[Field, ...]) -> Tally:
    """One Spark action for the counts of tagged rows, instead of one per number."""
    return tally_per_user(count_per_user(tagged, fields), fields)


def tally_per_user(per_user: DataFrame, fields: tuple[Field, ...]) -> Tally:
    """The counts from ``count_per_user`` rows: distinct users become a plain count (countDistinct
    would expand and shuffle every row). A ``_has_state`` column (null: no state) adds the good
    users without state."""
    cats = _tallied_categoricals(fields)
    aggs = [F.sum("_n").alias("_n"), F.count("user_id").alias("_users"), *[F.sum(f.name).alias(f.name) for f in cats]]
    if "_has_state" in per_user.columns:
        aggs.append(F.count(F.when(F.col("_has_state").isNull(), F.col("user_id"))).alias("_stateless"))
    rows = per_user.groupBy(REASON).agg(*aggs).collect()
    good = next((r for r in rows if r[REASON] is None), None)
    return Tally(
        rows=sum(int(r["_n"]) for r in rows),
        reasons={r[REASON]: int(r["_n"]) for r in rows if r[REASON] is not None},
        unknown_categorical={f.name: int(good[f.name] or 0) if good else 0 for f in cats},
        users=int(good["_users"]) if good else 0,
        stateless_users=int(good.asDict().get("_stateless") or 0) if good else 0,
    )


def _tallied_categoricals(fields: tuple[Field, ...]) -> list[Field]:
    return [f for f in fields if f.kind == FieldKind.CATEGORICAL and f.name not in KEYS]
