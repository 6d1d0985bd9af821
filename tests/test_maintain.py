"""`ugsep maintain`: VACUUM removes what a killed write left behind, keeps every live row."""

import os

import pytest
from pyspark.sql import functions as F

from jobs.contracts import SCORES
from jobs.delta_io import ensure_table, replace_day
from jobs.maintain import RETENTION_CHECK, maintain

pytestmark = pytest.mark.spark
DS = "2026-08-01"


def test_vacuum_removes_orphan_files_and_keeps_the_day(spark, job_cfg):
    path = job_cfg.table_path(SCORES)
    ensure_table(spark, SCORES, path)
    rows = [(DS, "m", u, i, 0.5, i) for u in range(3) for i in range(4)]
    for run in ("first", "rerun"):  # the rerun's replace leaves the first write's files unreferenced
        replace_day(spark.createDataFrame(rows, SCORES.ddl), path, DS, run)
    day = path + f"/ds={DS}"
    live = spark.read.format("delta").load(job_cfg.table_path(SCORES)).where(F.col("ds") == DS).count()
    # what a write killed before its commit leaves: a data file the Delta log never mentions
    orphan = os.path.join(day, "part-00000-killed-write.c000.snappy.parquet")
    spark.createDataFrame([(1, 2)], "a int, b int").toPandas().to_parquet(orphan)
    old = os.path.getmtime(orphan) - 3600
    os.utime(orphan, (old, old))

    with pytest.raises(ValueError, match=f"under Delta's 168-hour retention.*--conf {RETENTION_CHECK}=false"):
        maintain(spark, job_cfg, vacuum_hours=0)
    assert os.path.exists(orphan)

    spark.conf.set(RETENTION_CHECK, "false")
    try:
        result = maintain(spark, job_cfg, vacuum_hours=0, optimize=True)
    finally:
        spark.conf.unset(RETENTION_CHECK)
    assert not os.path.exists(orphan) and result["tables"][SCORES.name]["files_removed"] >= 1
    assert spark.read.format("delta").load(job_cfg.table_path(SCORES)).where(F.col("ds") == DS).count() == live
