"""Load a day's user_state (and the user feature snapshot) into the Feast online store.

Feast's own ``materialize`` pulls everything through the driver in one piece (feast#2594,
#5707). Here a Redis online store is written from the executors: each Spark task writes the
rows of its own share (``feature_store.redis_write``; for user_state, one of the day's Parquet
files, read by the task itself) and only row counts come back, so the write scales with the
cluster and the driver holds no rows. SQLite is one local file of the driver, so it is written
from the driver, in hash buckets of about ``batch_rows`` users straight from Arrow
(``feature_store.online_write``): driver memory stays bounded whatever the number of users.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
import time
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_store.definitions import TableLocation, feast_objects
from feature_store.online_write import write_arrow
from feature_store.redis_write import (
    COUNT_DDL,
    file_batch_writer,
    readable_by_pyarrow,
    redis_batch_writer,
    writes_from_executors,
)
from feature_store.store import check_online_store, feature_store
from jobs.config import JobConfig, TableSource, day_start, parse_ds
from jobs.contracts import ITEM_FEATURES, USER_FEATURES, USER_STATE
from jobs.delta_io import read_model_input, read_table
from ugsep.checkpoint import checkpoint_info
from ugsep.features import FeatureSpec


def warehouse_feast_objects(cfg: JobConfig, spec: FeatureSpec | None = None) -> list:
    """The Feast objects over this config's tables, for its model's spec (or ``spec``)."""
    spec = spec or checkpoint_info(cfg.model).spec
    return feast_objects(spec, cfg.table_path(USER_STATE), feast_location(cfg.source(USER_FEATURES)),
                         feast_location(cfg.source(ITEM_FEATURES)))


def feast_location(source: TableSource) -> TableLocation:
    """Where Feast's offline store finds an input table, its renamed key columns mapped back."""
    return TableLocation(source.path, source.catalog_table, {theirs: ours for ours, theirs in source.renames.items()})


def apply_features(cfg: JobConfig, redis: str | None = None) -> list[str]:
    """Register the entity and feature views (idempotent); returns the names registered. An
    unreachable Redis online store fails here (OnlineStoreError), before anything is registered."""
    store = feature_store(cfg.warehouse, redis or cfg.redis or None)
    check_online_store(store.config)
    objects = warehouse_feast_objects(cfg)
    store.apply(objects)
    return [o.name for o in objects]


def written_from(store, view: str, from_driver: bool = False) -> str:
    """"executors" where each Spark task can write its own rows to the online store (Redis),
    else "driver" (SQLite, a local file of the driver); ``from_driver`` forces the driver."""
    if from_driver or not writes_from_executors(store.config, store.get_feature_view(view)):
        return "driver"
    return "executors"


def write_online(df: DataFrame, store, view: str, batch_rows: int, label: str, from_driver: bool = False) -> int:
    """Write ``df`` to the online store of ``view``, from where ``written_from`` says."""
    if written_from(store, view, from_driver) == "executors":
        return write_from_executors(df, store, view, label)
    return write_from_driver(df, store, view, batch_rows, label)


def write_from_executors(df: DataFrame, store, view: str, label: str) -> int:
    """Each task writes its partitions to the Redis online store; the driver sums the row counts."""
    counts = df.mapInArrow(redis_batch_writer(store.config, store.get_feature_view(view)), COUNT_DDL)
    written = _redis_job(lambda: counts.agg(F.sum("rows")).first()[0] or 0)
    print(f"[materialize] {label}: {written:,} users written from the executors", file=sys.stderr, flush=True)
    return written


def write_files_from_executors(spark: SparkSession, files: list[str], columns: list[str], store, view: str,
                               ds: str, label: str) -> int:
    """Each task reads one of the day's Parquet files (``state_files``) itself and writes its rows
    to the Redis online store; the driver sums the row counts."""
    writer = file_batch_writer(store.config, store.get_feature_view(view), columns,
                               dt.datetime.fromtimestamp(day_start(ds), dt.UTC))
    rdd = spark.sparkContext.parallelize(files, len(files)).mapPartitions(writer)
    written = _redis_job(lambda: rdd.sum()) if files else 0
    print(f"[materialize] {label}: {written:,} users written from the executors, {len(files)} files read there",
          file=sys.stderr, flush=True)
    return written


def state_files(spark: SparkSession, path: str, ds: str) -> list[str] | None:
    """The Parquet files holding exactly ds's user_state rows, when plain Parquet reads them as
    Delta does: no deletion vectors (every row of a file is live) and no column mapping (columns
    named as in the schema), neither being among the table's features, and a filesystem pyarrow
    reads. None otherwise (Spark reads the rows then)."""
    features = set(DeltaTable.forPath(spark, path).detail().first()["tableFeatures"] or [])
    if features & {"deletionVectors", "columnMapping"}:
        return None
    files = read_table(spark, USER_STATE, path).where(F.col("ds") == ds).inputFiles()
    return files if all(map(readable_by_pyarrow, files)) else None


def _redis_job(run):
    """Run a Spark job of Redis writers; an unreachable Redis fails as on the driver's path."""
    try:
        return run()
    except Exception as e:
        unreachable = redis_error_of_workers(e)
        if unreachable is None:
            raise
        raise unreachable from e


# the last line of a Python worker's traceback, as Spark's PythonException carries it to the driver
_WORKER_REDIS_ERROR = re.compile(r"^redis\.exceptions\.(\w+): (.*)$", re.MULTILINE)


def redis_error_of_workers(exc: Exception) -> Exception | None:
    """The Redis ConnectionError or TimeoutError an executor's writer failed with, rebuilt from
    the text of Spark's wrapper (None for any other error): an unreachable Redis then fails the
    job as it does on the driver's path, where the CLI names its address."""
    import redis

    found = _WORKER_REDIS_ERROR.findall(str(exc))
    cls = getattr(redis.exceptions, found[-1][0], None) if found else None
    unreachable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    return cls(found[-1][1]) if isinstance(cls, type) and issubclass(cls, unreachable) else None


def write_from_driver(df: DataFrame, store, view: str, batch_rows: int, label: str) -> int:
    """Write ``df`` through the driver in hash buckets of about ``batch_rows`` rows."""
    df = df.persist()
    try:
        total = df.count()
        n_buckets = max(1, math.ceil(total / batch_rows))
        written = 0
        for b in range(n_buckets):
            part = df.where(F.pmod(F.xxhash64("user_id"), F.lit(n_buckets)) == b).toArrow()
            if part.num_rows:
                write_arrow(store, view, part)
            written += part.num_rows
            print(f"\r[materialize] {label}: {written:,}/{total:,} users", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:  # a failed write must not leave the rows cached in a session that goes on (backfill)
        df.unpersist()
    return written


STATE_COLUMNS = ["user_id", "model_version", "state", "created_at", "event_ts"]  # what the user_state view reads


def write_user_state(spark: SparkSession, path: str, ds: str, store, batch_rows: int = 20000,
                     from_driver: bool = False, from_files: bool = True) -> tuple[int, str]:
    """Write ds's user_state rows to the online store: (rows, where from). Rows written before
    event_ts existed hold null there and are stamped with the start of ds. Redis: from the
    executors, each reading the day's Parquet files itself (``state_files``; ``from_files=False``
    or a table they cannot read: Spark reads them); SQLite: from the driver."""
    label, where = f"user_state ds={ds}", written_from(store, "user_state", from_driver)
    files = state_files(spark, path, ds) if where == "executors" and from_files else None
    if files is not None:
        return write_files_from_executors(spark, files, STATE_COLUMNS, store, "user_state", ds, label), where
    state = (read_table(spark, USER_STATE, path).where(F.col("ds") == ds)
             .select(*STATE_COLUMNS[:-1], F.coalesce("event_ts", F.timestamp_seconds(F.lit(day_start(ds))))
                     .alias("event_ts")))
    return write_online(state, store, "user_state", batch_rows, label, from_driver), where


def online_ds_marker(cfg: JobConfig, store) -> Path:
    """Where the ds of the user_state last written to ``store``'s online store is kept."""
    online = store.config.online_store
    name = "sqlite" if online.type != "redis" else "redis-" + re.sub(r"[^\w.-]", "_", online.connection_string)
    return Path(cfg.warehouse).resolve() / "_online" / f"user_state_ds.{name}.json"


def materialize_day(spark: SparkSession, cfg: JobConfig, ds: str, redis: str | None = None,
                    batch_rows: int = 20000, with_user_features: bool = True, force: bool = False,
                    from_driver: bool = False) -> dict:
    """Write ds's user_state (and the user feature snapshot) to the online store. A day older than
    the one already online is skipped unless ``force``: a backfill of past days through the DAG
    must not put old state in front of online serving. ``from_driver``: write a Redis store
    through the driver too, as SQLite is (benchmarks compare the two)."""
    ds = parse_ds(ds)
    if batch_rows < 1:
        raise ValueError(f"--batch-rows must be at least 1, got {batch_rows}")
    t0 = time.perf_counter()
    redis = redis or cfg.redis or None
    apply_features(cfg, redis)
    store = feature_store(cfg.warehouse, redis)
    marker = online_ds_marker(cfg, store)
    online_ds = json.loads(marker.read_text())["ds"] if marker.exists() else None
    if online_ds is not None and ds < online_ds and not force:
        print(f"materialize ds={ds}: skipped, the online store holds user_state of the later ds={online_ds} "
              "(--force writes this day over it)", flush=True)
        return _emit(cfg, {"job": "materialize", "ds": ds, "skipped": f"user_state of ds={online_ds} is online",
                           "user_state_rows": 0, "user_feature_rows": 0})
    n_state, where = write_user_state(spark, cfg.table_path(USER_STATE), ds, store, batch_rows, from_driver)
    if n_state == 0:
        raise ValueError(f"user_state has no rows for ds={ds}; run `ugsep user-stage --ds {ds}` first")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"ds": ds}))
    n_feats = 0
    if with_user_features:
        feats = read_model_input(spark, cfg, checkpoint_info(cfg.model).spec, USER_FEATURES)
        n_feats = write_online(feats, store, "user_features", batch_rows, "user_features", from_driver)
    secs = time.perf_counter() - t0
    out = {"job": "materialize", "ds": ds, "user_state_rows": n_state, "user_feature_rows": n_feats,
           "online_store": "redis" if (redis or store.config.online_store.type == "redis") else "sqlite",
           "written_from": where, "seconds": round(secs, 2), "rows_per_s": round((n_state + n_feats) / secs, 1)}
    print(f"materialize ds={ds} user_state={n_state} user_features={n_feats} seconds={secs:.1f} "
          f"rows/s={out['rows_per_s']:,} (state and feature rows, written from the {where})", flush=True)
    return _emit(cfg, out)


def _emit(cfg: JobConfig, out: dict) -> dict:
    """Keep the result as warehouse/_summaries/materialize_<ds>.json, beside the other jobs' summaries."""
    path = cfg.summary_path("materialize", out["ds"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out
