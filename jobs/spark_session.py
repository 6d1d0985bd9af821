"""The one Spark session builder: Delta configured, local[*] by default, everything overridable."""

from __future__ import annotations

import os
import sys
from typing import Any

from pyspark.sql import SparkSession

# Defaults sized for one machine; a cluster's spark-submit or the job config overrides them.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.driver.memory": "4g",
    # Generated classes kept for reuse. With the default 100, a session running a second day
    # (a backfill) compiled its plans again and the JIT warmed them up again: 84 -> 65 JVM
    # core-s for a 2M-candidate `ugsep run` on 2 cores.
    "spark.sql.codegen.cache.maxEntries": "2000",
    # `ugsep run` caches the checked day (a few narrow columns, ~50 bytes a candidate): building
    # it uncompressed took 3.3-4.1 s instead of 3.9-5.4 s for 2M candidates on 2 cores.
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    # A day's write has one partition value (ds): with an open writer per value, up to 4, rows go
    # straight to their file instead of through a sort by the partition column first.
    "spark.sql.maxConcurrentOutputFileWriters": "4",
    # The throughput collector: no concurrent marking threads and cheaper write barriers than
    # G1. In local mode the driver runs the tasks: 4-6 fewer JVM core-s per 2M-candidate day.
    # JIT thresholds x5: each day still compiled ~1,500 planning methods run only a few hundred
    # times (catalyst rules, Delta's log code) while per-row loops run millions of times and
    # compile anyway. JVM CPU for a 2M-candidate day, days 1-3 of a session: 79/51/47 -> 51/40/47 core-s.
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC -XX:CompileThresholdScaling=5",
}
DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _local_defaults(submitted: bool) -> dict[str, str]:
    """LOCAL_DEFAULTS, less what spark-submit already set; none when it submitted to a cluster.
    (Settings given to the builder override the submitted ones, so they must not all be given.)"""
    if not submitted:
        return LOCAL_DEFAULTS
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connect to spark-submit's JVM, as getOrCreate would
    given = SparkConf()  # its --master, --conf and defaults file, read from the JVM
    if not given.get("spark.master", "local").startswith("local"):
        return {}
    return {k: v for k, v in LOCAL_DEFAULTS.items() if not given.contains(k)}


def build_spark(app_name: str = "ugsep", conf: dict[str, Any] | None = None) -> SparkSession:
    """Get or create the session. Under spark-submit the master, jars and settings come from
    there; the job config's `conf` still overrides them."""
    from delta import configure_spark_with_delta_pip

    conf = {k: str(v) for k, v in (conf or {}).items()}
    builder = SparkSession.builder.appName(app_name)
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM and this driver
    if not submitted and "spark.master" not in conf:
        builder = builder.master("local[*]")
    # Python workers run this interpreter (the venv's) unless the environment says otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for k, v in {**_local_defaults(submitted), **DELTA_SETTINGS, **conf}.items():
        builder = builder.config(k, v)
    if not submitted and "spark.jars.packages" not in conf:
        builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(conf.get("ugsep.log_level", "WARN"))
    return spark
