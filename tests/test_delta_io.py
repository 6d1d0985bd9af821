"""Day replacement on a real Delta table: replace, never append; skip only what is provably a no-op."""

import pytest

pytestmark = pytest.mark.spark


def test_replace_day_and_the_empty_write_shortcut(spark, tmp_path):
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from jobs.contracts import QUARANTINE
    from jobs.delta_io import ensure_table, replace_day

    path = str(tmp_path / "quarantine")
    ensure_table(spark, QUARANTINE, path)
    rows = lambda n: spark.createDataFrame([("2026-01-02", "user", "r", f"{{{i}}}") for i in range(n)],
                                           "ds string, stage string, reason string, row string")
    commits = lambda: DeltaTable.forPath(spark, path).history().count()
    count = lambda: spark.read.format("delta").load(path).where("ds = '2026-01-02' AND stage = 'user'").count()

    assert replace_day(rows(3), path, "2026-01-02", "run-a", "stage = 'user'") == 3
    # the count is of this write, and the commit carries the run id
    assert replace_day(rows(1).withColumn("ds", F.lit("2026-01-03")), path, "2026-01-03", "run-x") == 1
    tags = {r[0] for r in DeltaTable.forPath(spark, path).history().select("userMetadata").collect()}
    assert {"run-a", "run-x"} <= tags
    assert replace_day(rows(2), path, "2026-01-02", "run-b", "stage = 'user'") == 2 and count() == 2
    # nothing to write, but old rows to remove: the write happens and the day ends empty
    before = commits()
    assert replace_day(rows(0), path, "2026-01-02", "run-c", "stage = 'user'", known_rows=0) == 0
    assert count() == 0 and commits() == before + 1
    # nothing to write and nothing to remove: no commit at all
    assert replace_day(rows(0), path, "2026-01-02", "run-d", "stage = 'user'", known_rows=0) == 0
    assert commits() == before + 1


def test_scores_files_carry_stats_for_the_key_columns_only(spark, tmp_path):
    import json

    from jobs.contracts import SCORES
    from jobs.delta_io import ensure_table, replace_day

    path = tmp_path / "scores"
    ensure_table(spark, SCORES, str(path))
    rows = spark.createDataFrame([("2026-01-02", "v1", u, i, 0.5, 1) for u in range(3) for i in range(2)], SCORES.ddl)
    assert replace_day(rows, str(path), "2026-01-02", "run-a") == 6
    adds = [json.loads(line)["add"] for f in sorted((path / "_delta_log").glob("*.json"))
            for line in f.read_text().splitlines() if '"add"' in line]
    stats = [json.loads(a["stats"]) for a in adds]
    assert stats and all(set(s["minValues"]) == {"user_id", "item_id"} for s in stats)
    assert sum(s["numRecords"] for s in stats) == 6


def test_a_table_from_an_earlier_version_gets_the_new_contract_columns(spark, tmp_path):
    """user_state tables written before event_ts existed: the column is added, null in old rows,
    and the table then passes its contract and takes new days."""
    from pyspark.sql import functions as F

    from jobs.contracts import USER_STATE, TableContract
    from jobs.delta_io import ensure_table, read_table, replace_day

    path = str(tmp_path / "user_state")
    old = TableContract("user_state", tuple(c for c in USER_STATE.columns if c[0] != "event_ts"),
                        USER_STATE.partition_by)
    ensure_table(spark, old, path)
    old_row = spark.createDataFrame([("2026-01-01", "v1", 7, [0.5])],
                                    "ds string, model_version string, user_id bigint, state array<float>")
    old_row = old_row.withColumn("created_at", F.current_timestamp())
    replace_day(old_row, path, "2026-01-01", "old-run")

    ensure_table(spark, USER_STATE, path)
    table = read_table(spark, USER_STATE, path)  # raises if a contract column is missing
    assert [r.event_ts for r in table.collect()] == [None]
    new_row = old_row.withColumn("ds", F.lit("2026-01-02")).withColumn("event_ts", F.timestamp_seconds(F.lit(0)))
    assert replace_day(new_row, path, "2026-01-02", "new-run") == 1
    assert read_table(spark, USER_STATE, path).count() == 2
    ensure_table(spark, USER_STATE, path)  # nothing left to add: no change
    assert read_table(spark, USER_STATE, path).columns == USER_STATE.names


def test_backfill_creates_the_run_tables_before_days_run_side_by_side(spark, tmp_path, model_dir):
    from delta.tables import DeltaTable

    from jobs.config import JobConfig
    from jobs.contracts import QUARANTINE, SCORES, USER_STATE
    from jobs.delta_io import ContractError, read_table
    from jobs.generate import generate_tables
    from jobs.run_day import ensure_run_tables

    cfg = JobConfig(warehouse=str(tmp_path / "warehouse"), model=model_dir)
    with pytest.raises(ContractError, match="no Delta table"):  # no input tables: no output table either
        ensure_run_tables(spark, cfg)
    assert not any(DeltaTable.isDeltaTable(spark, cfg.table_path(c)) for c in (USER_STATE, SCORES, QUARANTINE))
    generate_tables(spark, cfg, "2026-11-01", 5, mean_cands=2)
    ensure_run_tables(spark, cfg)
    for contract in (USER_STATE, SCORES, QUARANTINE):
        assert read_table(spark, contract, cfg.table_path(contract)).columns == contract.names
