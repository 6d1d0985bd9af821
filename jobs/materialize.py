"""Load a day's user_state (and the user feature snapshot) into the Feast online store.

Feast's own ``materialize`` pulls everything through the driver in one piece (feast#2594,
#5707); here the day is written in hash buckets of about ``batch_rows`` users, straight from
Arrow into the online store (``features.online_write``), so driver memory stays bounded
whatever the number of users.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_store.definitions import TableLocation, feast_objects
from feature_store.online_write import write_arrow
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


def write_online(df: DataFrame, store, view: str, batch_rows: int, label: str) -> int:
    """Write ``df`` to the online store of ``view`` in hash buckets of about ``batch_rows`` rows."""
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


def online_ds_marker(cfg: JobConfig, store) -> Path:
    """Where the ds of the user_state last written to ``store``'s online store is kept."""
    online = store.config.online_store
    name = "sqlite" if online.type != "redis" else "redis-" + re.sub(r"[^\w.-]", "_", online.connection_string)
    return Path(cfg.warehouse).resolve() / "_online" / f"user_state_ds.{name}.json"


def materialize_day(spark: SparkSession, cfg: JobConfig, ds: str, redis: str | None = None,
                    batch_rows: int = 20000, with_user_features: bool = True, force: bool = False) -> dict:
    """Write ds's user_state (and the user feature snapshot) to the online store. A day older than
    the one already online is skipped unless ``force``: a backfill of past days through the DAG
    must not put old state in front of online serving."""
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
    state = (read_table(spark, USER_STATE, cfg.table_path(USER_STATE)).where(F.col("ds") == ds)
             .select("user_id", "model_version", "state", "created_at",
                     # rows written before event_ts existed hold null there
                     F.coalesce("event_ts", F.timestamp_seconds(F.lit(day_start(ds)))).alias("event_ts")))
    n_state = write_online(state, store, "user_state", batch_rows, f"user_state ds={ds}")
    if n_state == 0:
        raise ValueError(f"user_state has no rows for ds={ds}; run `ugsep user-stage --ds {ds}` first")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"ds": ds}))
    n_feats = 0
    if with_user_features:
        feats = read_model_input(spark, cfg, checkpoint_info(cfg.model).spec, USER_FEATURES)
        n_feats = write_online(feats, store, "user_features", batch_rows, "user_features")
    secs = time.perf_counter() - t0
    out = {"job": "materialize", "ds": ds, "user_state_rows": n_state, "user_feature_rows": n_feats,
           "online_store": "redis" if (redis or store.config.online_store.type == "redis") else "sqlite",
           "seconds": round(secs, 2), "rows_per_s": round((n_state + n_feats) / secs, 1)}
    print(f"materialize ds={ds} user_state={n_state} user_features={n_feats} seconds={secs:.1f} "
          f"rows/s={out['rows_per_s']:,} (state and feature rows)", flush=True)
    return _emit(cfg, out)


def _emit(cfg: JobConfig, out: dict) -> dict:
    """Keep the result as warehouse/_summaries/materialize_<ds>.json, beside the other jobs' summaries."""
    path = cfg.summary_path("materialize", out["ds"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out
