"""Write a synthetic day into the input tables (candidates for ds; user/item feature snapshots)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zlib

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from jobs.config import JobConfig, parse_ds
from jobs.contracts import CANDIDATES, ITEM_FEATURES, USER_FEATURES, TableContract, input_contracts
from jobs.delta_io import ensure_table, replace_day
from ugsep.data.arrow_columns import to_arrow_column
from ugsep.data.synthetic import generate_day, synthetic_spec

FEATURE_SEED = 0  # users and items keep their features across days; only candidates change


def to_arrow(cols: dict[str, np.ndarray], contract: TableContract, **const) -> pa.Table:
    arrays = {k: to_arrow_column(v) for k, v in cols.items() if k in contract.names}
    n = len(next(iter(arrays.values())))
    for k, v in const.items():
        arrays[k] = pa.array([v] * n)
    return pa.table({c: arrays[c] for c in contract.names})


def writable_path(cfg: JobConfig, table: str) -> str:
    """The Delta path a data-writing job (generate, import) writes an input table to: where the
    job config says, in our column names."""
    source = cfg.source(table)
    if source.catalog_table or source.renames:
        raise ValueError(f"[tables.{table}] of the job config names a catalog table or renamed columns; "
                         "generate and import write only to Delta paths in ugsep's own column names")
    return source.path


def synthetic_tables(ds: str, n_users: int, n_items: int = 0, mean_cands: float = 40.0,
                     max_cands: int = 2000) -> tuple[dict, dict, dict]:
    """(users, items, candidates) numpy columns of the synthetic day ``ds``."""
    n_items = n_items or max(2 * n_users, 1000)
    feats = generate_day(n_users, n_items, mean_cands=1, max_cands=1, seed=FEATURE_SEED)
    day = generate_day(n_users, n_items, mean_cands=mean_cands, max_cands=max_cands,
                       seed=zlib.crc32(ds.encode()))
    return feats.users, feats.items, day.candidates


def generate_tables(spark: SparkSession, cfg: JobConfig, ds: str, n_users: int, n_items: int = 0,
                    mean_cands: float = 40.0, max_cands: int = 2000) -> dict:
    """Candidates for ``ds`` replace that day; the feature tables are rewritten as snapshots."""
    t0 = time.perf_counter()
    users, items, candidates = synthetic_tables(parse_ds(ds), n_users, n_items, mean_cands, max_cands)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    contracts = input_contracts(synthetic_spec())
    paths = {name: writable_path(cfg, name) for name in contracts}
    for name, contract in contracts.items():
        ensure_table(spark, contract, paths[name])
    run_id = f"generate-{ds}-{uuid.uuid4().hex[:8]}"
    cands = spark.createDataFrame(to_arrow(candidates, contracts[CANDIDATES], ds=ds), contracts[CANDIDATES].ddl)
    n = replace_day(cands, paths[CANDIDATES], ds, run_id)
    for name, cols in ((USER_FEATURES, users), (ITEM_FEATURES, items)):
        df = spark.createDataFrame(to_arrow(cols, contracts[name], updated_at=now), contracts[name].ddl)
        df.write.format("delta").mode("overwrite").save(paths[name])
    secs = time.perf_counter() - t0
    return {"ds": ds, "candidates": n, "users": len(users["user_id"]), "items": len(items["item_id"]),
            "seconds": round(secs, 2), "candidates_per_s": round(n / secs, 1)}
