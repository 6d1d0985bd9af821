"""`ugsep import`: a public dataset's files -> the input tables of its model spec, and `labels`.

Two steps, so that bad files fail before Spark is touched: ``movielens_tables`` parses and
checks the files and derives every column (pure numpy, no Spark), ``write_import`` writes
them. An import is a snapshot: every table it writes is overwritten whole (all days of
candidates and labels), so a rerun leaves the same tables.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.contracts import (
    CANDIDATES,
    ITEM_FEATURES,
    LABELS,
    LABELS_CONTRACT,
    USER_FEATURES,
    TableContract,
    input_contracts,
)
from jobs.generate import to_arrow, writable_path
from ugsep.data.arrow_columns import to_arrow_column
from ugsep.data.movielens import MovieLensFiles, movielens_features, movielens_spec, rating_labels, read_movielens
from ugsep.data.ranking_data import Columns
from ugsep.features import FeatureSpec


@dataclass(frozen=True)
class ImportTables:
    """What an import writes, as columns: everything parsed, checked and derived."""

    source: str
    spec: FeatureSpec  # the model spec whose input tables these are
    users: Columns  # user_features: user_id and the spec's user fields
    items: Columns  # item_features: item_id and the spec's item fields
    events: Columns  # ds (str), user_id, item_id, label: one candidate and one label per rating
    seconds: float  # reading and checking the files

    def day_summary(self) -> dict:
        days = np.unique(self.events["ds"])
        return {"count": len(days), "first": str(days[0]) if len(days) else None,
                "last": str(days[-1]) if len(days) else None}


def utc_days(ts: np.ndarray) -> np.ndarray:
    """Seconds since the epoch -> the UTC day of each, as 'YYYY-MM-DD' strings."""
    return np.asarray(ts, dtype=np.int64).astype("datetime64[s]").astype("datetime64[D]").astype(str)


def movielens_tables(data_dir: str | Path) -> ImportTables:
    """Read and check MovieLens-100k format files (u.data, u.user, u.item) and derive the tables'
    columns with the same code as ``load_movielens``; a malformed line is a ValueError naming its
    file and line. Pure: no Spark."""
    t0 = time.perf_counter()
    files = read_movielens(data_dir)
    users, items = movielens_features(files)
    _check_unique(files, Path(data_dir))
    r = files.ratings
    events = {"ds": utc_days(r[:, 3]), "user_id": r[:, 0], "item_id": r[:, 1],
              "label": rating_labels(r[:, 2]).astype(np.float64)}
    return ImportTables("movielens", movielens_spec(), users, items, events, time.perf_counter() - t0)


def _check_unique(files: MovieLensFiles, d: Path) -> None:
    """One u.user line per user, one u.item line per item, one rating per (day, user, item): a
    second one would make the feature tables ambiguous or a candidate and its label count twice."""
    r = files.ratings
    keyed = (("u.user", np.array([int(x[0]) for x in files.user_rows], dtype=np.int64)[:, None], "user"),
             ("u.item", np.array([int(x[0]) for x in files.item_rows], dtype=np.int64)[:, None], "item"),
             ("u.data", np.c_[r[:, 3] // 86400, r[:, 0], r[:, 1]], "(day, user, item)"))
    for name, keys, what in keyed:
        if not len(keys):
            continue
        _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = int(first[np.argmax(counts > 1)])
            again = next(i for i in range(dup + 1, len(keys)) if (keys[i] == keys[dup]).all())
            lines = files.lines[name]
            raise ValueError(f"{d / name}, line {lines[again]}: the same {what} as line {lines[dup]}")


def _events_arrow(events: Columns, contract: TableContract) -> pa.Table:
    return pa.table({c: pa.array(events[c].tolist(), pa.string()) if c == "ds" else to_arrow_column(events[c])
                     for c in contract.names})


def write_import(spark: SparkSession, cfg: JobConfig, tables: ImportTables) -> dict:
    """Overwrite user_features, item_features, candidates (partitioned by ds) and labels (by ds)
    where the job config says, each with its contract's schema; returns the import's summary."""
    t0 = time.perf_counter()
    contracts = {**input_contracts(tables.spec), LABELS: LABELS_CONTRACT}
    paths = {name: writable_path(cfg, name) for name in contracts}  # refuse catalog tables before any write
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    run_id = f"import-{tables.source}-{uuid.uuid4().hex[:8]}"
    frames = {
        USER_FEATURES: to_arrow(tables.users, contracts[USER_FEATURES], updated_at=now),
        ITEM_FEATURES: to_arrow(tables.items, contracts[ITEM_FEATURES], updated_at=now),
        CANDIDATES: _events_arrow(tables.events, contracts[CANDIDATES]),
        LABELS: _events_arrow(tables.events, LABELS_CONTRACT),
    }
    for name, arrow in frames.items():
        contract = contracts[name]
        df = spark.createDataFrame(arrow, contract.ddl)
        writer = df.repartition(*[F.col(c) for c in contract.partition_by]) if contract.partition_by else df
        writer = (writer.write.format("delta").mode("overwrite")
                  .option("overwriteSchema", "true")  # a snapshot: exactly the contract's columns
                  .option("partitionOverwriteMode", "static")  # every day replaced, whatever the session says
                  .option("userMetadata", run_id))
        if contract.partition_by:
            writer = writer.partitionBy(*contract.partition_by)
        writer.save(paths[name])
    return {"source": tables.source, "users": len(tables.users["user_id"]), "items": len(tables.items["item_id"]),
            "ratings": len(tables.events["ds"]), "positive_rate": round(float(tables.events["label"].mean()), 4)
            if len(tables.events["ds"]) else None, "days": tables.day_summary(), "tables": paths,
            "seconds": round(tables.seconds + time.perf_counter() - t0, 2)}


def import_movielens(spark: SparkSession, cfg: JobConfig, data_dir: str | Path) -> dict:
    """Write MovieLens-100k format files into the input tables of ``movielens_spec()`` and the
    labels table (label = rating >= 4); each rating is a candidate on the UTC day of its
    timestamp. Bad files fail before anything is written. Returns the summary: users, items,
    ratings, days (count, first, last), the table paths, seconds."""
    return write_import(spark, cfg, movielens_tables(data_dir))
