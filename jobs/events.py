"""Behaviour sequences from the user_events table, point in time: a pure Spark plan.

A user's sequence for scoring day ``ds`` is made of the user's events strictly before 00:00 UTC
of ds, deduplicated, the most recent ``spec.sequence_len`` of them, oldest first (the converter's
layout: ``ugsep.data.arrow_columns``, ``sequence=True``). Order is by event time, ties by item id:
at one instant a smaller item id counts as the older event, both in the sequence and at the cap.

Deduplicated means: rows of one user with the same item_id and the same event instant
(``event_ts`` after parsing, so ``10:00Z`` and ``12:00+02:00`` are one) are one event. Their
item's side values are equal; of differing event columns (a rating), the row with the smallest
values in spec order is kept, so a rerun keeps the same row.

``event_ts`` may be a timestamp (the contract's type), epoch seconds (an integer column) or a
string: ISO 8601, with a zone designator (``Z``, ``+hh:mm``, ``+hhmm``, ``UTC``) or without one
(then it is UTC, whatever the session's time zone), or a date alone (00:00 UTC). A string that
does not parse is quarantined, as is every other bad row.

Every event row gets exactly one outcome (``OUTCOME``), so none vanishes:
    quarantined     a reason (``REASON``): null_user_id, null_item_id, null_event_ts,
                    unparsable_event_ts; then, for events before the day only:
                    missing_item_features (a sequence field reads an item feature and the item
                    has no row) and the value checks of the fields (null_<column>,
                    non_finite_<column>, as for every other table)
    after_day       at or after 00:00 UTC of ds: not used (not checked further either)
    duplicate       a duplicate of a kept event (see above): dropped
    beyond_max_len  valid and before the day, but older than the user's most recent max_len
    used            in the user's sequence

One shuffle by user serves everything: a window per user (latest first) marks duplicates and
ranks the events, and the sequences are collected on the same partitioning. No collect to the
driver, no Python UDF; only ``count_events`` runs an action, whose result is a few rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import day_start
from jobs.contracts import ITEM_FEATURES, SPARK_TYPE, USER_EVENTS, sequence_sources, user_events_contract
from jobs.validation import REASON, first_failure, quarantine_rows, value_checks
from ugsep.features import FeatureSpec

OUTCOME = "_outcome"  # what became of the event row (the OUTCOMES)
USED, AFTER_DAY, DUPLICATE, BEYOND_MAX_LEN, QUARANTINED = "used", "after_day", "duplicate", "beyond_max_len", \
    "quarantined"
OUTCOMES = (USED, AFTER_DAY, DUPLICATE, BEYOND_MAX_LEN, QUARANTINED)
TS = "_ts"  # event_ts as a timestamp (null when missing or unparsable)
POSITION = "_position"  # 1 for a user's most recent valid event before the day, 2 for the one before, ...
FOUND = "_item_found"  # true where the event's item has a row of item features
ZONED = r"(?i)(z|utc|gmt|[+-][0-9]{2}:?[0-9]{2})$"  # a string event_ts that names its zone
DATE_ONLY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def parse_event_ts(events: DataFrame) -> Column:
    """``event_ts`` as a timestamp whatever its type (see the module docstring), null when it is
    null or does not parse; a ValueError for a type it cannot be."""
    dtype = events.schema["event_ts"].dataType
    raw = F.col("event_ts")
    if isinstance(dtype, T.TimestampType):
        return raw
    if isinstance(dtype, T.IntegralType):
        return F.timestamp_seconds(raw)
    if not isinstance(dtype, T.StringType | T.TimestampNTZType):
        raise ValueError(f"user_events: event_ts has type {dtype.simpleString()}; expected timestamp, "
                         "epoch seconds (an integer) or an ISO 8601 string")
    text = F.trim(raw.cast("string"))  # a timestamp without zone prints as one: read it as UTC too
    utc = (F.when(text.rlike(ZONED), text).when(text.rlike(DATE_ONLY), F.concat(text, F.lit("T00:00:00Z")))
           .otherwise(F.concat(text, F.lit("Z"))))
    return F.try_to_timestamp(utc)


def tag_events(events: DataFrame, ds: str, spec: FeatureSpec, item_features: DataFrame | None = None
               ) -> DataFrame:
    """Every event row (the contract's columns of ``events``) with its outcome (``OUTCOME``),
    its quarantine reason (``REASON``, null unless quarantined), its parsed time (``TS``), its
    rank among the user's valid events before the day (``POSITION``) and the values of the
    sequence fields (the event's own columns; an item feature's column joined from
    ``item_features``, one row per item_id, needed when a sequence field reads one)."""
    sources = sequence_sources(spec)
    if not sources:
        raise ValueError("the feature spec has no sequence fields: there is no sequence to build")
    contract = user_events_contract(spec)
    missing = [c for c in contract.names if c != "ds" and c not in events.columns]
    if missing:
        raise ValueError(f"user_events: columns {missing} are missing (the spec's sequence fields need "
                         f"{contract.names}); it has {sorted(events.columns)}")
    df = events.select(*[c for c in contract.names if c in events.columns]).withColumn(TS, parse_event_ts(events))
    from_items = [s for s in sources if s.table == ITEM_FEATURES]
    value_rules = value_checks(tuple(replace(s.field, name=s.column) for s in sources))
    if from_items:
        if item_features is None:
            needs = ", ".join(f"{s.field.name} <- item_features.{s.column}" for s in from_items)
            raise ValueError(f"the sequence fields read item features ({needs}): pass item_features")
        feats = item_features.select("item_id", *[s.column for s in from_items]).withColumn(FOUND, F.lit(True))
        df = df.join(feats, "item_id", "left")
        value_rules.insert(0, (F.col(FOUND).isNull(), "missing_item_features"))

    before_day = F.col(TS) < F.timestamp_seconds(F.lit(day_start(ds)))
    key_reason = first_failure([
        (F.col("user_id").isNull(), "null_user_id"),
        (F.col("item_id").isNull(), "null_item_id"),
        (F.col("event_ts").isNull(), "null_event_ts"),
        (F.col(TS).isNull(), "unparsable_event_ts"),
    ])
    value_reason = first_failure(value_rules) if value_rules else F.lit(None).cast("string")
    df = (df.withColumn(REASON, F.coalesce(key_reason, F.when(before_day, value_reason)))
          .withColumn("_eligible", F.col(REASON).isNull() & before_day))  # a column: both windows sort by it
    eligible = F.col("_eligible")

    # latest first, valid events before the day ahead of every other row of the user
    latest = [eligible.desc(), F.col(TS).desc(), F.col("item_id").desc()]
    own = [F.col(s.column).asc_nulls_last() for s in sources if s.table == USER_EVENTS and s.column != "item_id"]
    by_recency = Window.partitionBy("user_id").orderBy(*latest)
    with_twins = Window.partitionBy("user_id").orderBy(*latest, *own)  # same sort, one shuffle
    same = (F.lag(TS).over(with_twins) == F.col(TS)) & (F.lag("item_id").over(with_twins) == F.col("item_id"))
    duplicate = eligible & F.coalesce(same, F.lit(False))  # the row before it is eligible too
    df = df.withColumn("_dup", duplicate).withColumn(POSITION, F.dense_rank().over(by_recency))
    outcome = (F.when(F.col(REASON).isNotNull(), QUARANTINED).when(~before_day, AFTER_DAY)
               .when(F.col("_dup"), DUPLICATE).when(F.col(POSITION) > spec.sequence_len, BEYOND_MAX_LEN)
               .otherwise(USED))
    return df.withColumn(OUTCOME, outcome).drop("_dup", "_eligible")


def event_sequences(tagged: DataFrame, spec: FeatureSpec) -> DataFrame:
    """One row per user with used events: ``user_id`` and an array column per sequence field
    (named as the field: array<bigint> categorical, array<double> dense), oldest event first."""
    sources = sequence_sources(spec)
    event = F.struct(F.col(TS).alias("t"), F.col("item_id").alias("i"),
                     *[F.col(s.column).cast(SPARK_TYPE[s.field.kind]).alias(f"v{k}") for k, s in enumerate(sources)])
    events = F.array_sort(F.collect_list(event))  # a struct compares field by field: time, then item id
    return (tagged.where(F.col(OUTCOME) == USED).groupBy("user_id").agg(events.alias("_events"))
            .select("user_id", *[F.col(f"_events.v{k}").alias(s.field.name) for k, s in enumerate(sources)]))


def attach_sequences(users: DataFrame, sequences: DataFrame, spec: FeatureSpec) -> DataFrame:
    """``users`` (a ``user_id`` column and any others) with their sequence columns; a user with
    no used event gets empty arrays, not an error (the converter pads them)."""
    out = users.join(sequences, "user_id", "left")
    for f in spec.sequence_fields:
        out = out.withColumn(f.name, F.coalesce(F.col(f.name), F.array().cast(f"array<{SPARK_TYPE[f.kind]}>")))
    return out


def quarantine_events(tagged: DataFrame, ds: str, spec: FeatureSpec, stage: str = "user") -> DataFrame:
    """The quarantined events in the quarantine table's shape, each row its event columns as
    JSON (event_ts as it was read: an unparsable string stays visible)."""
    columns = [c for c in user_events_contract(spec).names if c in tagged.columns]
    return quarantine_rows(tagged, ds, stage, columns)


@dataclass
class EventCounts:
    """What became of the event rows, for the job summary: ``rows`` is the sum of the rest."""

    rows: int  # event rows read
    used: int  # in a sequence
    after_day: int  # at or after 00:00 UTC of ds: not used
    duplicates: int  # dropped as a duplicate of a kept event
    beyond_max_len: int  # valid but older than the user's most recent max_len
    quarantined: dict[str, int]  # per reason
    users: int  # users with a non-empty sequence

    def summary(self) -> dict:
        """The counts under the job summary's keys."""
        return {"events_in": self.rows, "events_used": self.used, "events_after_day": self.after_day,
                "events_duplicate": self.duplicates, "events_beyond_max_len": self.beyond_max_len,
                "events_quarantined": sum(self.quarantined.values()), "event_quarantine_reasons": self.quarantined,
                "users_with_events": self.users}


def count_events(tagged: DataFrame) -> EventCounts:
    """One Spark action for all the counts; its result is a row per outcome and reason."""
    first_used = (F.col(OUTCOME) == USED) & (F.col(POSITION) == 1)
    rows = tagged.groupBy(OUTCOME, REASON).agg(F.count(F.lit(1)).alias("n"),
                                               F.count(F.when(first_used, 1)).alias("users")).collect()
    by = {o: sum(int(r["n"]) for r in rows if r[OUTCOME] == o) for o in OUTCOMES}
    return EventCounts(rows=sum(by.values()), used=by[USED], after_day=by[AFTER_DAY], duplicates=by[DUPLICATE],
                       beyond_max_len=by[BEYOND_MAX_LEN],
                       quarantined={r[REASON]: int(r["n"]) for r in rows if r[OUTCOME] == QUARANTINED},
                       users=sum(int(r["users"]) for r in rows))


@dataclass
class EventSequences:
    """The plan of one day's sequences, lazy: persist ``tagged`` before using more than one."""

    tagged: DataFrame  # every event row with its outcome (``tag_events``)
    sequences: DataFrame  # user_id + one array column per sequence field (``event_sequences``)
    quarantine: DataFrame  # the quarantined events, in the quarantine table's shape

    def counts(self) -> EventCounts:
        return count_events(self.tagged)


def build_sequences(events: DataFrame, ds: str, spec: FeatureSpec, item_features: DataFrame | None = None,
                    stage: str = "user") -> EventSequences:
    """Users' sequences as of ``ds`` from ``events`` (see the module docstring)."""
    tagged = tag_events(events, ds, spec, item_features)
    return EventSequences(tagged, event_sequences(tagged, spec), quarantine_events(tagged, ds, spec, stage))
