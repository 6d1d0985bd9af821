"""`ugsep maintain`: Delta housekeeping of the tables the pipeline writes.

VACUUM removes data files no longer referenced by the Delta log and older than the retention:
files of replaced days, and the files a killed write left behind (invisible to Delta readers,
but seen by tools that list the folders, and they cost storage). Delta refuses a retention
under its default (7 days) unless `spark.databricks.delta.retentionDurationCheck.enabled` is
false: a shorter one can delete files a running writer or a long reader still needs, so keep
the check unless no job runs meanwhile. OPTIMIZE compacts each table's small files.
"""

from __future__ import annotations

import time

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from jobs.baseline import BASELINE_TABLE
from jobs.config import JobConfig
from jobs.contracts import OUTPUTS

RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
DEFAULT_RETENTION_HOURS = 168  # Delta's default deletedFileRetentionDuration (7 days)


MAINTAINED = (*(t.name for t in OUTPUTS), BASELINE_TABLE)  # the tables the pipeline writes


def maintain(spark: SparkSession, cfg: JobConfig, vacuum_hours: float | None = None, optimize: bool = False) -> dict:
    """VACUUM (files older than ``vacuum_hours``; None: Delta's default retention) and, with
    ``optimize``, OPTIMIZE each existing output table. Returns per table what was done."""
    if vacuum_hours is not None and vacuum_hours < 0:
        raise ValueError(f"--vacuum-hours must be at least 0, got {vacuum_hours}")
    checked = spark.conf.get(RETENTION_CHECK, "true").lower() != "false"
    if vacuum_hours is not None and vacuum_hours < DEFAULT_RETENTION_HOURS and checked:
        raise ValueError(f"--vacuum-hours {vacuum_hours:g} is under Delta's {DEFAULT_RETENTION_HOURS}-hour retention: "
                         "files a running job still needs could go. If no job runs meanwhile, pass "
                         f"--conf {RETENTION_CHECK}=false")
    t0, out = time.perf_counter(), {}
    for name in MAINTAINED:
        path = cfg.table_path(name)
        if not DeltaTable.isDeltaTable(spark, path):
            continue
        table, done = DeltaTable.forPath(spark, path), {}
        if optimize:
            metrics = table.optimize().executeCompaction().first()["metrics"]
            done["files_compacted"] = int(metrics["numFilesRemoved"])
        before = _files_on_disk(spark, path)
        table.vacuum(vacuum_hours) if vacuum_hours is not None else table.vacuum()
        done["files_removed"] = before - _files_on_disk(spark, path)
        out[name] = done
        print(f"maintain {name}: {done}", flush=True)
    return {"job": "maintain", "tables": out, "seconds": round(time.perf_counter() - t0, 2)}


def _files_on_disk(spark: SparkSession, path: str) -> int:
    """Data files under the table's folder, referenced by the log or not (Hadoop's file system,
    so object stores work too)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    files, n = fs.listFiles(hpath, True), 0
    while files.hasNext():
        p = files.next().getPath().toString()
        n += p.endswith(".parquet") and "/_delta_log/" not in p
    return n
