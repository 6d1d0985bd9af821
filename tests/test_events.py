"""Point-in-time behaviour sequences from user_events (jobs/events.py) and the table's contract.

One small day of events covers every rule; it is planned and collected once (in a session time
zone other than UTC, which must not matter) and each test checks one rule against values
written by hand."""

import dataclasses
import datetime as dt
import json
import zlib

import numpy as np
import pytest

from jobs.contracts import (
    ITEM_FEATURES,
    QUARANTINE,
    USER_EVENTS,
    input_contracts,
    sequence_sources,
    user_events_contract,
)
from jobs.events import attach_sequences, build_sequences
from ugsep.data.arrow_columns import field_columns
from ugsep.data.movielens import movielens_sequence_spec
from ugsep.data.synthetic import synthetic_sequence_spec, synthetic_spec
from ugsep.features import PAD_ID, Field

DS = "2026-10-10"  # the scoring day: events strictly before 2026-10-10T00:00:00Z are used
# a history of 3 events: the item (sharing item_id's table), its category (an item feature) and
# the rating given (a column of the event)
SPEC = synthetic_spec().with_history(3, Field("hist_category", "categorical", buckets=32, dim=8),
                                     Field("hist_rating", "dense"))
EVENTS_DDL = "ds string, user_id bigint, item_id bigint, event_ts string, rating double"
NAN = float("nan")

ITEMS = [(10, 1), (11, 1), (12, 2), (13, 3), (14, 4), (20, 5), (21, 6), (22, 7), (23, 8), (30, 9), (40, 11),
         (50, None)]  # (item_id, category); item 50's category is null; item 99 has no features

EVENTS = [
    # user 1, the day boundary (and zone offsets): three events before 00:00 UTC, two not
    ("2026-10-09", 1, 13, "2026-10-09T22:00:00+02:00", 1.0),  # 20:00 UTC on the 9th
    ("2026-10-10", 1, 14, "2026-10-10T01:00:00+02:00", 2.0),  # 23:00 UTC on the 9th: used
    ("2026-10-09", 1, 10, "2026-10-09T23:59:59Z", 3.0),  # the last second before the day: used
    ("2026-10-10", 1, 11, "2026-10-10T00:00:00Z", 4.0),  # the day's first second: not used
    ("2026-10-10", 1, 12, "2026-10-10T12:00:00Z", 5.0),  # later that day: not used
    # user 2, the cap (3) keeps the most recent; time order, ties by item id
    ("2026-10-01", 2, 20, "2026-10-01T00:00:00Z", 1.0),  # the oldest: beyond the cap
    ("2026-10-05", 2, 23, "2026-10-05T00:00:00Z", 2.0),  # ties with item 30, smaller id = older: beyond
    ("2026-10-05", 2, 30, "2026-10-05T00:00:00Z", 3.0),
    ("2026-10-08", 2, 22, "2026-10-08T12:00:00Z", 4.0),  # ties with item 21: after it in the sequence
    ("2026-10-08", 2, 21, "2026-10-08T12:00:00Z", 5.0),
    # user 3, duplicates: one user, item and instant are one event (the smallest rating is kept)
    ("2026-10-07", 3, 40, "2026-10-07T10:00:00Z", 5.0),
    ("2026-10-07", 3, 40, "2026-10-07T10:00:00Z", 5.0),
    ("2026-10-07", 3, 40, "2026-10-07T10:00:00Z", 1.0),  # kept
    ("2026-10-07", 3, 40, "2026-10-07T12:00:00+02:00", 4.0),  # the same instant, written otherwise
    ("2026-10-08", 3, 40, "2026-10-08T10:00:00Z", 2.0),  # the same item another time: a new event
    # user 4, only events after the day
    ("2026-10-11", 4, 10, "2026-10-11T00:00:00Z", 1.0),
    # user 6, no zone in the string: UTC, whatever the session's time zone
    ("2026-10-09", 6, 10, "2026-10-09 23:59:59", 1.5),
    ("2026-10-10", 6, 11, "2026-10-10 00:00:00", 1.5),
    # user 7, bad events, one reason each, and one good event
    ("2026-10-09", 7, None, "2026-10-09T10:00:00Z", 1.0),
    ("2026-10-09", None, 10, "2026-10-09T10:00:00Z", 1.0),
    ("2026-10-09", 7, 10, None, 1.0),
    ("2026-10-09", 7, 10, "yesterday", 1.0),
    ("2026-10-09", 7, 99, "2026-10-09T10:00:00Z", 1.0),  # its item has no features
    ("2026-10-09", 7, 50, "2026-10-09T11:00:00Z", 1.0),  # its item's category is null
    ("2026-10-09", 7, 10, "2026-10-09T12:00:00Z", None),
    ("2026-10-09", 7, 11, "2026-10-09T13:00:00Z", NAN),
    ("2026-10-09", 7, 12, "2026-10-09T14:00:00Z", 2.5),  # good
    ("2026-10-12", 7, 99, "2026-10-12T00:00:00Z", 1.0),  # after the day: not used, so not checked
]
REASONS = {"null_item_id": 1, "null_user_id": 1, "null_event_ts": 1, "unparsable_event_ts": 1,
           "missing_item_features": 1, "null_category": 1, "null_rating": 1, "non_finite_rating": 1}
# user -> (hist_item_id, hist_category, hist_rating), oldest first
SEQUENCES = {
    1: ([13, 14, 10], [3, 4, 1], [1.0, 2.0, 3.0]),
    2: ([30, 21, 22], [9, 6, 7], [3.0, 5.0, 4.0]),
    3: ([40, 40], [11, 11], [1.0, 2.0]),
    6: ([10], [1], [1.5]),
    7: ([12], [2], [2.5]),
}


def as_dict(rows):
    return {r["user_id"]: (r["hist_item_id"], r["hist_category"], r["hist_rating"]) for r in rows}


@pytest.fixture(scope="module")
def day(spark):
    """The day's plan, built and run in a non-UTC session time zone; what the tests read of it."""
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        events = spark.createDataFrame(EVENTS, EVENTS_DDL)
        items = spark.createDataFrame(ITEMS, "item_id bigint, category bigint")
        plan = build_sequences(events, DS, SPEC, items)
        physical = plan.sequences._jdf.queryExecution().executedPlan().toString()  # before any cache
        plan.tagged.persist()
        users = spark.createDataFrame([(1,), (4,), (5,)], "user_id bigint")  # 5 has no events at all
        out = {
            "sequences": plan.sequences.collect(),
            "schema": plan.sequences.schema,
            "quarantine": plan.quarantine.collect(),
            "quarantine_columns": plan.quarantine.columns,
            "counts": plan.counts(),
            "attached": attach_sequences(users, plan.sequences, SPEC).collect(),
            "arrow": plan.sequences.orderBy("user_id").toArrow(),
            "plan": physical,
        }
        plan.tagged.unpersist()
        return out
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


@pytest.mark.spark
def test_only_events_strictly_before_the_day_in_utc_are_used(day):
    assert as_dict(day["sequences"])[1] == SEQUENCES[1]  # 23:59:59Z on the 9th in, 00:00:00Z on the 10th out
    assert 4 not in as_dict(day["sequences"])  # all its events are after the day
    assert as_dict(day["sequences"])[6] == SEQUENCES[6]  # a string without a zone is UTC


@pytest.mark.spark
def test_the_cap_keeps_the_most_recent_in_time_order_ties_by_item_id(day):
    assert as_dict(day["sequences"])[2] == SEQUENCES[2]


@pytest.mark.spark
def test_duplicates_are_one_event(day):
    assert as_dict(day["sequences"])[3] == SEQUENCES[3]


@pytest.mark.spark
def test_every_user_with_a_used_event_has_exactly_its_sequence(day):
    got = as_dict(day["sequences"])
    assert {u: (i, c, [round(x, 6) for x in r]) for u, (i, c, r) in got.items()} == SEQUENCES
    types = {f.name: f.dataType.simpleString() for f in day["schema"].fields}
    assert types == {"user_id": "bigint", "hist_item_id": "array<bigint>", "hist_category": "array<bigint>",
                     "hist_rating": "array<double>"}


@pytest.mark.spark
def test_a_user_without_events_gets_empty_sequences(day):
    got = as_dict(day["attached"])
    assert got == {1: SEQUENCES[1], 4: ([], [], []), 5: ([], [], [])}


@pytest.mark.spark
def test_each_bad_event_is_quarantined_with_its_reason(day):
    q = day["quarantine"]
    assert day["quarantine_columns"] == QUARANTINE.names
    assert {r["ds"] for r in q} == {DS} and {r["stage"] for r in q} == {"user"}
    by_reason = {}
    for r in q:
        by_reason.setdefault(r["reason"], []).append(json.loads(r["row"]))
    assert {k: len(v) for k, v in by_reason.items()} == REASONS
    assert by_reason["unparsable_event_ts"][0]["event_ts"] == "yesterday"  # the row as it was read
    assert by_reason["missing_item_features"][0] == {"ds": "2026-10-09", "user_id": 7, "item_id": 99,
                                                    "event_ts": "2026-10-09T10:00:00Z", "rating": 1.0}
    assert by_reason["null_category"][0]["item_id"] == 50
    assert "user_id" not in by_reason["null_user_id"][0]  # to_json leaves null fields out


@pytest.mark.spark
def test_the_counts_account_for_every_event(day):
    c = day["counts"]
    assert (c.rows, c.used, c.after_day, c.duplicates, c.beyond_max_len, c.users) == (28, 10, 5, 3, 2, 5)
    assert c.quarantined == REASONS
    assert c.summary()["events_quarantined"] == 8 and c.summary()["events_after_day"] == 5


@pytest.mark.spark
def test_the_sequences_feed_the_converter_right_aligned(day):
    cols = field_columns({n: day["arrow"].column(n).combine_chunks() for n in day["arrow"].column_names},
                         SPEC.sequence_fields, sequence=True)
    # users 1, 2, 3, 6, 7 in order; the most recent event in the last column
    np.testing.assert_array_equal(cols["hist_item_id"], [[13, 14, 10], [30, 21, 22], [PAD_ID, 40, 40],
                                                         [PAD_ID, PAD_ID, 10], [PAD_ID, PAD_ID, 12]])
    np.testing.assert_array_equal(cols["hist_rating"][2], np.array([0.0, 1.0, 2.0], np.float32))


@pytest.mark.spark
def test_the_plan_is_one_shuffle_by_user_and_no_python(day):
    plan = day["plan"]
    # the window and the collect share one shuffle by user (the other exchanges are the item features join)
    assert plan.count("Exchange hashpartitioning(user_id") == 1
    assert "Window" in plan and "Python" not in plan and "ArrowEval" not in plan


@pytest.mark.spark
@pytest.mark.parametrize("kind", ["timestamp", "epoch seconds"])
def test_the_day_boundary_with_typed_timestamps(spark, kind):
    """The contract's timestamp column (and epoch seconds) keep the rule: the last second before
    00:00 UTC is in, the day's first second is out."""
    before = dt.datetime(2026, 10, 9, 23, 59, 59, tzinfo=dt.UTC)
    at = dt.datetime(2026, 10, 10, tzinfo=dt.UTC)
    rows = [("2026-10-09", 1, 10, before), ("2026-10-10", 1, 11, at)]
    if kind == "epoch seconds":
        rows, ddl = [(d, u, i, int(t.timestamp())) for d, u, i, t in rows], "event_ts bigint"
    else:
        ddl = "event_ts timestamp"
    events = spark.createDataFrame(rows, f"ds string, user_id bigint, item_id bigint, {ddl}")
    spec = synthetic_sequence_spec(4)  # item and category: no event column of its own
    items = spark.createDataFrame([(10, 1), (11, 2)], "item_id bigint, category bigint")
    plan = build_sequences(events, DS, spec, items)
    assert [tuple(r) for r in plan.sequences.collect()] == [(1, [10], [1])]
    c = plan.counts()
    assert (c.used, c.after_day, c.quarantined) == (1, 1, {})


@pytest.mark.spark
def test_bad_arguments_are_named(spark):
    events = spark.createDataFrame([("2026-10-09", 1, 10, "2026-10-09T00:00:00Z")],
                                   "ds string, user_id bigint, item_id bigint, event_ts string")
    with pytest.raises(ValueError, match=r"columns \['rating'\] are missing"):
        build_sequences(events, DS, SPEC, spark.createDataFrame([(10, 1)], "item_id bigint, category bigint"))
    with pytest.raises(ValueError, match=r"read item features \(hist_category <- item_features.category\)"):
        build_sequences(events, DS, synthetic_sequence_spec(4))
    with pytest.raises(ValueError, match="no sequence fields"):
        build_sequences(events, DS, synthetic_spec())
    odd = events.withColumn("event_ts", events["user_id"].cast("double"))
    with pytest.raises(ValueError, match="event_ts has type double"):
        build_sequences(odd, DS, synthetic_spec().with_history(4))


# -- the contract (no Spark) --

def test_the_events_contract_follows_the_spec():
    contract = user_events_contract(SPEC)
    assert contract.name == USER_EVENTS and contract.partition_by == ("ds",)
    assert contract.columns == (("ds", "string"), ("user_id", "bigint"), ("item_id", "bigint"),
                                ("event_ts", "timestamp"), ("rating", "double"))
    assert dict(contract.fields)["rating"] == "the model's sequence field 'hist_rating' (dense)"
    assert [(s.field.name, s.column, s.table) for s in sequence_sources(SPEC)] == [
        ("hist_item_id", "item_id", USER_EVENTS), ("hist_category", "category", ITEM_FEATURES),
        ("hist_rating", "rating", USER_EVENTS)]
    assert user_events_contract(movielens_sequence_spec(5)).names[-1] == "rating"
    assert user_events_contract(synthetic_sequence_spec(5)).names == ["ds", "user_id", "item_id", "event_ts"]
    assert USER_EVENTS in input_contracts(SPEC) and USER_EVENTS not in input_contracts(synthetic_spec())


@pytest.mark.parametrize("side, match", [
    (Field("hist_user_id", "categorical"), "would read the events table's key column 'user_id'"),
    (Field("hist_price", "categorical"), r"reads item field 'price', which is dense"),
    (Field("rating", "dense"), None),  # no prefix: the column of its own name
])
def test_sequence_sources_are_checked(side, match):
    spec = synthetic_spec().with_history(4, side)
    if match is None:
        assert user_events_contract(spec).names[-1] == "rating"
        return
    with pytest.raises(ValueError, match=match):
        user_events_contract(spec)


def test_two_fields_cannot_read_one_column():
    spec = dataclasses.replace(SPEC, sequence_fields=(*SPEC.sequence_fields, Field("rating", "dense", max_len=3)))
    with pytest.raises(ValueError, match="'hist_rating' and 'rating' both read column 'rating'"):
        user_events_contract(spec)


@pytest.mark.spark
def test_generate_writes_the_day_before_as_events(spark, tmp_path):
    """`ugsep generate --history N`: the events land in the day before ds, all before ds starts,
    and the sequences built from them as of ds are the generator's histories."""
    from jobs.config import JobConfig, day_start
    from jobs.delta_io import read_input
    from jobs.generate import FEATURE_SEED, generate_tables
    from ugsep.data.synthetic import generate_day, with_sequences

    cfg = JobConfig(warehouse=str(tmp_path / "wh"))
    out = generate_tables(spark, cfg, DS, n_users=12, n_items=40, mean_cands=2, max_cands=4, history=4)
    spec = synthetic_sequence_spec(4)
    events = read_input(spark, cfg.source(USER_EVENTS), user_events_contract(spec))
    assert out["events_ds"] == "2026-10-09" and out["events"] == events.count() > 0
    assert [r["ds"] for r in events.select("ds").distinct().collect()] == ["2026-10-09"]
    first, last = events.selectExpr("min(unix_timestamp(event_ts))", "max(unix_timestamp(event_ts))").first()
    assert day_start(DS) - 86_400 < first and last < day_start(DS)
    items = read_input(spark, cfg.source(ITEM_FEATURES), input_contracts(spec)[ITEM_FEATURES])
    plan = build_sequences(events, DS, spec, items)
    got = {r["user_id"]: r["hist_item_id"] for r in plan.sequences.collect()}
    feats = generate_day(12, 40, mean_cands=1, max_cands=1, seed=FEATURE_SEED)
    hist = with_sequences(feats, 4, seed=zlib.crc32(DS.encode())).users["hist_item_id"].tolist()
    assert got == {u: [i for i in row if i != PAD_ID] for u, row in enumerate(hist) if set(row) != {PAD_ID}}
    assert plan.counts().quarantined == {}
    with pytest.raises(ValueError, match="history = -1"):
        generate_tables(spark, cfg, DS, n_users=12, history=-1)
