"""The one Spark session builder: Delta configured, local[*] by default, everything overridable."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
    # generated classes kept for reuse: with the default 100 a session's second day (a
    # backfill) compiles its plans again and the JIT warms them up again
    "spark.sql.codegen.cache.maxEntries": "2000",
    # `ugsep run` caches the checked day (a few narrow columns): uncompressed builds faster
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    # A day's write has one partition value (ds): with an open writer per value, up to 4, rows go
    # straight to their file instead of through a sort by the partition column first.
    "spark.sql.maxConcurrentOutputFileWriters": "4",
    # In local mode the driver runs the tasks. The throughput collector has no concurrent marking
    # threads and cheaper write barriers than G1; JIT thresholds x5 stop compiling planning code
    # that runs a few hundred times (catalyst rules, Delta's log code), while per-row loops run
    # millions of times and compile anyway.
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC -XX:CompileThresholdScaling=5",
}
DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def delta_packages() -> str:
    """The Maven coordinates of the Delta jars matching the installed delta-spark (what a
    spark-submit of the ugsep CLI passes as --packages)."""
    from delta import configure_spark_with_delta_pip

    return configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]


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


LOG_DIR_ENV = "UGSEP_LOG_DIR"  # where a quiet session's JVM output goes (default ./logs)


@contextmanager
def jvm_output_to(log: Path | None) -> Iterator[None]:
    """While the block runs, file descriptors 1 and 2 point at ``log``: a JVM started inside
    keeps them, so its Ivy resolution report and log4j warnings land in the file for good, while
    this process's own output goes back to the terminal afterwards. ``None``: no redirection."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)


def jvm_log_path(app_name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return Path(os.environ.get(LOG_DIR_ENV, "logs")).resolve() / f"{app_name}_{stamp}_{os.getpid()}.log"


def build_spark(app_name: str = "ugsep", conf: dict[str, Any] | None = None, quiet: bool = False) -> SparkSession:
    """Get or create the session. Under spark-submit the master, jars and settings come from
    there; the job config's `conf` still overrides them. ``quiet``: a JVM started here writes
    its own output (Ivy, Spark's warnings) to a log file under $UGSEP_LOG_DIR (./logs), named
    on stderr, instead of the terminal."""
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
    log = jvm_log_path(app_name) if quiet and not submitted and SparkSession.getActiveSession() is None else None
    with jvm_output_to(log):
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(conf.get("ugsep.log_level", "WARN"))
    if log is not None:
        print(f"spark {spark.version} ({spark.sparkContext.master}); its log: {log}", file=sys.stderr, flush=True)
    return spark
