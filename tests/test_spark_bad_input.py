"""Bad input: every bad row is quarantined with a reason, or the job fails before writing."""

import datetime as dt
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_model
from pyspark.sql import functions as F

from jobs.config import parse_ds
from jobs.contracts import CANDIDATES, ITEM_FEATURES, QUARANTINE, SCORES, USER_FEATURES, input_contracts
from jobs.delta_io import ContractError
from jobs.run_day import run_day
from ugsep.data.ranking_data import to_tensors
from ugsep.data.synthetic import synthetic_spec

pytestmark = pytest.mark.spark
DS = "2026-10-10"
NOW = dt.datetime(2026, 10, 10)


CONTRACTS = input_contracts(synthetic_spec())  # the test model's input tables


def write(spark, cfg, table, rows, ddl=None, path=None):
    df = spark.createDataFrame(rows, ddl or CONTRACTS[table].ddl)
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path or cfg.table_path(table))


def users_rows():
    return [
        (1, 3, 2, 5, [1, 2], 1.5, NOW),
        (2, 4, 1, 6, [], 0.2, NOW),
        (3, 5, 0, 7, [3], float("nan"), NOW),  # bad dense value -> user quarantined
        (4, 6, 3, 8, [4, 5, 6], 2.0, NOW),
        (6, 1, 1, 2, [2], None, NOW),  # null dense value -> user quarantined
        (7, None, 1, 2, [2], 0.5, NOW),  # null categorical value -> user quarantined (not scored as id 0)
    ]


# feature history: older rows of user 1 and item 10, with other values; the latest row is the one used
OLD_FEATURES = NOW - dt.timedelta(days=1)
OLD_USER_ROWS = [(1, 3, 2, 5, [1, 2], 99.0, OLD_FEATURES)]
OLD_ITEM_ROWS = [(10, 1, [1], 0.01, 0.5, OLD_FEATURES), (10, 7, [2], 3.0, 0.5, OLD_FEATURES)]

LATE_USER = (5, 2, 1, 4, [2], 0.7, NOW)  # valid features, added after the user stage ran: no state
LATE_CANDIDATE = (DS, 5, 12, 1.0)


def items_rows():
    return [
        (10, 1, [1], 9.9, 0.5, NOW),
        (11, 2, [2, 3], 1.0, 0.1, NOW),
        (12, 999, [], 5.0, 2.0, NOW),  # category outside the buckets -> hashed and counted
        (13, 4, [5], float("inf"), 1.0, NOW),  # bad dense value -> its candidates quarantined
        (14, None, [1], 1.0, 1.0, NOW),  # null categorical value -> its candidates quarantined
    ]


def candidate_rows():
    return [
        (DS, 1, 10, 1.0), (DS, 1, 11, 2.0), (DS, 1, 12, 3.0),
        (DS, 2, 10, 1.0), (DS, 2, 10, 5.0),  # duplicate (user, item): the later one is quarantined
        (DS, None, 11, 1.0),  # null user id
        (DS, 2, None, 1.0),  # null item id
        (DS, 4, 99, 1.0),  # unknown item: no item features
        (DS, 4, 13, 1.0),  # item with an inf price
        (DS, 4, 11, 1.0),
        (DS, 9, 10, 1.0),  # user without features
        (DS, 3, 10, 1.0),  # user whose features hold NaN
        (DS, 6, 11, 1.0),  # user whose features hold a null
        (DS, 7, 10, 1.0),  # user whose segment is null
        (DS, 1, 14, 1.0),  # item whose category is null
    ]


@pytest.fixture
def bad_day(spark, job_cfg):
    write(spark, job_cfg, USER_FEATURES, OLD_USER_ROWS + users_rows())
    write(spark, job_cfg, ITEM_FEATURES, OLD_ITEM_ROWS + items_rows())
    write(spark, job_cfg, CANDIDATES, candidate_rows())
    return job_cfg


def test_bad_rows_are_quarantined_with_reasons(spark, bad_day):
    cfg = bad_day
    from jobs.score_stage import UserStateError, run_score_stage
    from jobs.user_stage import run_user_stage

    user = run_user_stage(spark, cfg, DS)
    assert user["quarantine_reasons"] == {"missing_user_features": 1, "non_finite_activity": 1, "null_activity": 1,
                                          "null_segment": 1}
    assert user["rows_out"] == 3  # users 1, 2, 4
    reasons = {
        "duplicate_candidate": 1, "null_user_id": 1, "null_item_id": 1,
        "missing_item_features": 1, "non_finite_price": 1, "null_category": 1,
        "missing_user_features": 1, "non_finite_activity": 1, "null_activity": 1, "null_segment": 1,  # users 9, 3, 6, 7
    }
    # users 9, 3, 6 and 7 have no state because their features are bad: quarantined, the day goes on
    summary = run_score_stage(spark, cfg, DS)
    assert summary["quarantine_reasons"] == reasons and summary["users_computed_on_the_fly"] == 0
    assert summary["rows_out"] + summary["rows_quarantined"] == summary["rows_in"] == len(candidate_rows())

    # a user with valid features but no state is named unless the stage is told to compute it
    write(spark, cfg, USER_FEATURES, users_rows() + [LATE_USER])
    write(spark, cfg, CANDIDATES, candidate_rows() + [LATE_CANDIDATE])
    stateless = r"1 users of ds=2026-10-10 have valid features but no user_state \(e.g. \[5\]\)"
    with pytest.raises(UserStateError, match=stateless):
        run_score_stage(spark, cfg, DS)
    summary = run_score_stage(spark, cfg, DS, compute_missing=True)
    assert summary["quarantine_reasons"] == reasons
    assert summary["users_computed_on_the_fly"] == 1
    assert summary["unknown_categorical"]["category"] == 2  # item 12, for users 1 and 5
    assert summary["rows_in"] == len(candidate_rows()) + 1
    assert summary["rows_out"] + summary["rows_quarantined"] == summary["rows_in"]  # nothing vanished
    q = spark.read.format("delta").load(cfg.table_path(QUARANTINE)).where(F.col("ds") == DS).toPandas()
    assert set(q["stage"]) == {"user", "score"}
    dup = q.loc[q["reason"] == "duplicate_candidate", "row"].map(json.loads).iloc[0]
    assert dup["user_id"] == 2 and dup["item_id"] == 10 and dup["recency"] == 5.0

    # the surviving scores equal the model on the same rows, with each key's latest features
    scores = spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == DS).toPandas()
    model = make_model(seed=5)
    u = {r[0]: r for r in users_rows() + [LATE_USER]}
    it = {r[0]: r for r in items_rows()}
    for row in scores.itertuples():
        ur, ir = u[row.user_id], it[row.item_id]
        rec = [c[3] for c in candidate_rows() + [LATE_CANDIDATE] if c[1] == row.user_id and c[2] == row.item_id][0]
        users = to_tensors({"user_id": np.array([ur[0]]), "segment": np.array([ur[1]]),
                            "age_bucket": np.array([ur[2]]), "country": np.array([ur[3]]),
                            "interests": np.array([(ur[4] + [-1] * 5)[:5]]), "activity": np.array([ur[5]])})
        items = to_tensors({"item_id": np.array([ir[0]]), "category": np.array([ir[1]]),
                            "tags": np.array([(ir[2] + [-1] * 4)[:4]]), "price": np.array([ir[3]]),
                            "popularity": np.array([ir[4]]), "recency": np.array([rec])})
        with torch.no_grad():
            expected = torch.sigmoid(model(users, items, torch.tensor([0]))).item()
        assert math.isclose(row.score, expected, abs_tol=1e-5)

    # `ugsep run` counts candidates in rows_quarantined and the user stage's users apart
    run = run_day(spark, cfg, DS)
    assert run["users_quarantined"] == 4  # users 9, 3, 6, 7 (user 5 now has state)
    assert run["rows_quarantined"] == sum(reasons.values())
    assert run["rows_out"] + run["rows_quarantined"] == run["rows_in"]

    # the naive one-stage job quarantines the same rows for the same reasons
    from jobs.baseline import run_baseline

    baseline = run_baseline(spark, cfg, DS)
    assert baseline["quarantine_reasons"] == reasons
    assert baseline["rows_out"] + baseline["rows_quarantined"] == baseline["rows_in"] == run["rows_in"]

    # the day's candidates are gone (a dropped partition, data not landed): every job fails, naming the
    # table, and the day's scores and state stay as they were
    from delta.tables import DeltaTable

    from jobs.contracts import USER_STATE
    from jobs.user_stage import run_user_stage
    from jobs.validation import EmptyDayError

    kept = {c: spark.read.format("delta").load(cfg.table_path(c)).where(F.col("ds") == DS).count()
            for c in (SCORES, USER_STATE)}
    DeltaTable.forPath(spark, cfg.table_path(CANDIDATES)).delete(F.col("ds") == DS)
    empty = f"no candidates for ds={DS} in {cfg.table_path(CANDIDATES)}"
    for job in (run_day, run_user_stage, run_score_stage, run_baseline):
        with pytest.raises(EmptyDayError, match=empty):
            job(spark, cfg, DS)
    assert kept == {c: spark.read.format("delta").load(cfg.table_path(c)).where(F.col("ds") == DS).count()
                    for c in (SCORES, USER_STATE)} and min(kept.values()) > 0
    # a day that is legitimately empty: recorded as done with zero rows, its tables left as they are
    empty_day = run_day(spark, cfg, DS, allow_empty=True)
    assert empty_day["empty_day"] and empty_day["rows_in"] == 0
    assert json.loads(cfg.summary_path("run", DS).read_text())["empty_day"] is True
    assert kept == {c: spark.read.format("delta").load(cfg.table_path(c)).where(F.col("ds") == DS).count()
                    for c in (SCORES, USER_STATE)}


def test_a_mistyped_warehouse_gets_no_tables(spark, tmp_path, model_dir):
    """A job pointed at a warehouse without input tables fails before creating any output table."""
    from jobs.config import JobConfig
    from jobs.score_stage import run_score_stage
    from jobs.user_stage import run_user_stage

    cfg = JobConfig(warehouse=str(tmp_path / "warehous"), model=model_dir)
    for job in (run_user_stage, run_score_stage, run_day):
        with pytest.raises(ContractError, match=r"table (candidates|user_features|item_features): no Delta table"):
            job(spark, cfg, DS)
    assert not (tmp_path / "warehous").exists() or not any((tmp_path / "warehous").iterdir())


def test_schema_mismatch_fails_before_writing(spark, job_cfg):
    cfg = job_cfg
    write(spark, cfg, USER_FEATURES, users_rows())
    write(spark, cfg, ITEM_FEATURES, items_rows())
    bad_ddl = CONTRACTS[CANDIDATES].ddl.replace("recency double", "recency string")
    write(spark, cfg, CANDIDATES, [(DS, 1, 10, "yesterday")], bad_ddl)
    with pytest.raises(ContractError, match=r"candidates \(.*\): column 'recency' has type string, expected double "
                                            r"for the model's context field 'recency' \(dense\)"):
        run_day(spark, cfg, DS)
    from delta.tables import DeltaTable
    assert not DeltaTable.isDeltaTable(spark, cfg.table_path(SCORES)) or \
        spark.read.format("delta").load(cfg.table_path(SCORES)).count() == 0


def test_missing_column_is_named(spark, job_cfg):
    write(spark, job_cfg, USER_FEATURES, [(1, 2)], "user_id bigint, segment bigint")
    write(spark, job_cfg, ITEM_FEATURES, items_rows())
    write(spark, job_cfg, CANDIDATES, [(DS, 1, 10, 1.0)])
    with pytest.raises(ContractError, match=r"user_features \(.*\): column 'age_bucket' is missing \(expected "
                                            r"bigint for the model's user field 'age_bucket' \(categorical\)\)"):
        run_day(spark, job_cfg, DS)


def test_a_string_where_an_id_belongs_is_named(spark, job_cfg):
    ddl = CONTRACTS[USER_FEATURES].ddl.replace("segment bigint", "segment string")
    write(spark, job_cfg, USER_FEATURES, [(1, "gold", 2, 5, [1], 1.0, NOW)], ddl)
    write(spark, job_cfg, ITEM_FEATURES, items_rows())
    write(spark, job_cfg, CANDIDATES, [(DS, 1, 10, 1.0)])
    with pytest.raises(ContractError, match=r"user_features \(.*\): column 'segment' has type string, expected "
                                            r"bigint for the model's user field 'segment'"):
        run_day(spark, job_cfg, DS)


def test_null_ids_inside_a_list_are_quarantined(spark, job_cfg):
    write(spark, job_cfg, USER_FEATURES, [(1, 3, 2, 5, [1, None], 1.5, NOW), (2, 4, 1, 6, [2], 0.2, NOW)])
    write(spark, job_cfg, ITEM_FEATURES, [(10, 1, [1, None, 2], 9.9, 0.5, NOW), (11, 2, [2], 1.0, 0.1, NOW)])
    write(spark, job_cfg, CANDIDATES, [(DS, 1, 11, 1.0), (DS, 2, 10, 1.0), (DS, 2, 11, 1.0)])
    run = run_day(spark, job_cfg, DS)
    assert run["quarantine_reasons"] == {"user:null_in_interests": 1, "score:null_in_interests": 1,
                                         "score:null_in_tags": 1}
    assert run["rows_out"] == 1  # user 2, item 11


@pytest.mark.parametrize("bad_value", [float("-inf"), float("nan"), None])
def test_a_duplicate_keeps_its_valid_row(spark, job_cfg, bad_value):
    """Of duplicate (user, item) rows, one with a bad value never wins over a valid twin."""
    write(spark, job_cfg, USER_FEATURES, users_rows())
    write(spark, job_cfg, ITEM_FEATURES, items_rows())
    write(spark, job_cfg, CANDIDATES, [(DS, 1, 10, bad_value), (DS, 1, 10, 3.0), (DS, 1, 11, 2.0)])
    run = run_day(spark, job_cfg, DS)
    assert run["quarantine_reasons"] == {"score:duplicate_candidate": 1} and run["rows_out"] == 2
    q = spark.read.format("delta").load(job_cfg.table_path(QUARANTINE)).where(F.col("stage") == "score").toPandas()
    kept_out = json.loads(q["row"].iloc[0])
    assert kept_out["item_id"] == 10 and kept_out.get("recency") != 3.0  # the bad twin went, the valid one scored


def test_tables_of_the_users_own_with_renamed_keys_and_extra_columns(spark, tmp_path, model_dir):
    """job.toml maps each input table to a location and the warehouse's own key names; extra
    columns are ignored. The scores equal those of the same data in ugsep's own layout."""
    from jobs.config import load_config

    own = tmp_path / "lake"
    users = [(*r, "extra") for r in users_rows()]
    write(spark, None, USER_FEATURES, users, CONTRACTS[USER_FEATURES].ddl.replace("user_id", "uid")
          + ", note string", path=str(own / "people"))
    write(spark, None, ITEM_FEATURES, items_rows(), CONTRACTS[ITEM_FEATURES].ddl.replace("item_id", "sku")
          .replace("updated_at", "modified"), path=str(own / "products"))
    write(spark, None, CANDIDATES, candidate_rows(), CONTRACTS[CANDIDATES].ddl.replace("ds", "day")
          .replace("user_id", "uid").replace("item_id", "sku"), path=str(own / "cands"))
    conf = tmp_path / "job.toml"
    conf.write_text(f'warehouse = "wh"\nmodel = "{model_dir}"\nusers_per_batch = 16\npartitions = 2\n'
                    '[tables.candidates]\npath = "lake/cands"\nds = "day"\nuser_id = "uid"\nitem_id = "sku"\n'
                    '[tables.user_features]\npath = "lake/people"\nuser_id = "uid"\n'
                    '[tables.item_features]\npath = "lake/products"\nitem_id = "sku"\nupdated_at = "modified"\n')
    cfg = load_config(str(conf))
    mapped = run_day(spark, cfg, DS)
    plain_cfg = load_config(None, warehouse=str(tmp_path / "plain"), model=model_dir, users_per_batch=16)
    write(spark, plain_cfg, USER_FEATURES, users_rows())
    write(spark, plain_cfg, ITEM_FEATURES, items_rows())
    write(spark, plain_cfg, CANDIDATES, candidate_rows())
    plain = run_day(spark, plain_cfg, DS)
    assert (mapped["rows_out"], mapped["quarantine_reasons"]) == (plain["rows_out"], plain["quarantine_reasons"])

    def scores(c):
        return spark.read.format("delta").load(c.table_path(SCORES)).toPandas().sort_values(["user_id", "item_id"])

    np.testing.assert_array_equal(scores(cfg)["score"].to_numpy(), scores(plain_cfg)["score"].to_numpy())

    conf.write_text(conf.read_text().replace('user_id = "uid"\nitem_id', 'user_id = "customer"\nitem_id'))
    with pytest.raises(ContractError, match=r"candidates \(.*lake/cands\): column 'customer', which the job config "
                                            r"names as its user_id, is missing"):
        run_day(spark, load_config(str(conf)), DS)


@pytest.mark.parametrize("bad", ["2026-13-01", "20261101", "yesterday", "2026-1-1", "2026-W48-2", "2026-331"])
def test_unparseable_ds(bad):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_ds(bad)


def test_tally_counts_rows_reasons_users_and_unknown_values(spark):
    from jobs.score_stage import with_state_flag
    from jobs.validation import count_per_user, tally, tally_per_user
    from ugsep.features import Field, FieldKind

    fields = (Field("item_id", FieldKind.CATEGORICAL, buckets=100), Field("category", FieldKind.CATEGORICAL, buckets=8))
    rows = [  # (user_id, reason, category)
        (1, None, 3), (1, None, 9), (2, None, -1), (2, None, 2), (3, None, 1),
        (3, "duplicate_candidate", 1), (4, "missing_item_features", 0), (None, "null_user_id", 0),
    ]
    with_state = {1, 3, 4}
    df = spark.createDataFrame(rows, "user_id bigint, _reason string, category bigint").repartition(3, "user_id")
    state = spark.createDataFrame([(u,) for u in with_state], "user_id bigint")
    good = [r for r in rows if r[1] is None]
    for t in (tally(df, fields), tally_per_user(with_state_flag(count_per_user(df, fields), state), fields)):
        assert t.rows == len(rows)
        assert t.reasons == {"duplicate_candidate": 1, "missing_item_features": 1, "null_user_id": 1}
        assert t.users == len({r[0] for r in good}) == 3
        assert t.unknown_categorical == {"category": sum(not 0 <= r[2] < 8 for r in good)} == {"category": 2}
    assert t.stateless_users == len({r[0] for r in good if r[0] not in with_state}) == 1
