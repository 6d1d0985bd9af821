"""Write a synthetic day into the input tables (candidates for ds; user/item feature snapshots;
with a history length, the events of the day before ds that a sequence model reads)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zlib

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from jobs.config import JobConfig, day_start, parse_ds
from jobs.contracts import CANDIDATES, ITEM_FEATURES, USER_EVENTS, USER_FEATURES, TableContract, input_contracts
from jobs.delta_io import ensure_table, replace_day
from ugsep.data.arrow_columns import to_arrow_column
from ugsep.data.synthetic import generate_day, synthetic_sequence_spec, synthetic_spec, with_sequences
from ugsep.features import PAD_ID

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


DAY_US = 86_400 * 1_000_000


def previous_day(ds: str) -> str:
    return (dt.date.fromisoformat(parse_ds(ds)) - dt.timedelta(days=1)).isoformat()


def synthetic_histories(ds: str, n_users: int, n_items: int = 0, history: int = 50) -> dict[str, np.ndarray]:
    """Each user's synthetic history as of ``ds`` (``with_sequences`` of the feature day, seeded by
    ``ds``; up to ``history`` events, some users none): the users' columns of the feature day plus
    ``hist_item_id`` (item ids) and ``hist_category``, (U, history) right-aligned, as the model reads them."""
    n_items = n_items or max(2 * n_users, 1000)
    feats = generate_day(n_users, n_items, mean_cands=1, max_cands=1, seed=FEATURE_SEED)
    users = with_sequences(feats, history, seed=zlib.crc32(ds.encode())).users
    hist = users["hist_item_id"]  # item rows
    ids = np.where(hist != PAD_ID, feats.items["item_id"][np.where(hist != PAD_ID, hist, 0)], PAD_ID)
    return {**users, "hist_item_id": ids.astype(np.int64)}


def synthetic_events(ds: str, n_users: int, n_items: int = 0, history: int = 50) -> pa.Table:
    """user_events rows of the day before ``ds``: each user's ``synthetic_histories``, its events
    spread evenly over that UTC day in history order, so a sequence built as of ``ds`` is it."""
    users = synthetic_histories(ds, n_users, n_items, history)
    hist = users["hist_item_id"]  # (U, L) right-aligned item ids
    valid = hist != PAD_ID
    slot = np.broadcast_to(np.arange(history), hist.shape)[valid]  # row by row, oldest first
    start_us = (day_start(ds) * 1_000_000) - DAY_US
    ts = start_us + (slot + 1) * (DAY_US // (history + 1))
    return pa.table({
        "ds": pa.array([previous_day(ds)] * len(slot), pa.string()),
        "user_id": pa.array(np.repeat(users["user_id"], valid.sum(1)).astype(np.int64)),
        "item_id": pa.array(hist[valid]),
        "event_ts": pa.array(ts.astype(np.int64), pa.timestamp("us", tz="UTC")),
    })


def generate_tables(spark: SparkSession, cfg: JobConfig, ds: str, n_users: int, n_items: int = 0,
                    mean_cands: float = 40.0, max_cands: int = 2000, history: int = 0) -> dict:
    """Candidates for ``ds`` replace that day; the feature tables are rewritten as snapshots.
    ``history`` > 0: also the events of the day before ``ds`` (``synthetic_events``, that day of
    user_events replaced), up to ``history`` per user: what a sequence model of that length reads."""
    if history < 0:
        raise ValueError(f"history = {history}: events per user must be 0 (none) or more")
    t0 = time.perf_counter()
    users, items, candidates = synthetic_tables(parse_ds(ds), n_users, n_items, mean_cands, max_cands)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    contracts = input_contracts(synthetic_sequence_spec(history) if history > 0 else synthetic_spec())
    paths = {name: writable_path(cfg, name) for name in contracts}
    for name, contract in contracts.items():
        ensure_table(spark, contract, paths[name])
    run_id = f"generate-{ds}-{uuid.uuid4().hex[:8]}"
    cands = spark.createDataFrame(to_arrow(candidates, contracts[CANDIDATES], ds=ds), contracts[CANDIDATES].ddl)
    n = replace_day(cands, paths[CANDIDATES], ds, run_id)
    for name, cols in ((USER_FEATURES, users), (ITEM_FEATURES, items)):
        df = spark.createDataFrame(to_arrow(cols, contracts[name], updated_at=now), contracts[name].ddl)
        df.write.format("delta").mode("overwrite").save(paths[name])
    events = {}
    if history > 0:
        day = previous_day(ds)
        rows = spark.createDataFrame(synthetic_events(ds, n_users, n_items, history), contracts[USER_EVENTS].ddl)
        events = {"events": replace_day(rows, paths[USER_EVENTS], day, run_id), "events_ds": day}
    secs = time.perf_counter() - t0
    return {"ds": ds, "candidates": n, "users": len(users["user_id"]), "items": len(items["item_id"]), **events,
            "seconds": round(secs, 2), "candidates_per_s": round(n / secs, 1)}
