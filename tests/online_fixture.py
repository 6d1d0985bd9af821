"""An online store filled without Spark, for the serving tests and benchmarks/scoring_service.py.

The Feast objects are applied for a warehouse; user features and the state of some users are
written with the writer ``ugsep materialize`` uses (``feature_store.online_write``), the state
encoded by the model as the user stage does. Rows are those of the synthetic day's tables.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import torch

from feature_store.definitions import TableLocation, feast_objects
from feature_store.online_write import write_arrow
from feature_store.store import feature_store
from jobs.contracts import user_features_contract
from jobs.generate import to_arrow
from ugsep.checkpoint import load_checkpoint
from ugsep.data.arrow_columns import list_column
from ugsep.data.ranking_data import to_tensors

OTHER_VERSION = "ugsep-0000000000000000"  # written as the state of users "of another model"


def fill_online_store(warehouse: str, ckpt: str, users: dict[str, np.ndarray], with_state: np.ndarray,
                      redis: str | None = None, other_version: np.ndarray | None = None) -> np.ndarray:
    """Apply the Feast objects, write every user's features and the state of ``users`` rows where
    ``with_state`` (a bool mask); rows where ``other_version`` get their state stamped with
    another model's version. Returns the (users, width) float32 states of all rows."""
    model, version = load_checkpoint(ckpt)
    spec = model.spec
    store = feature_store(warehouse, redis)
    store.apply(feast_objects(spec, f"{warehouse}/user_state", TableLocation(path=f"{warehouse}/user_features"),
                              TableLocation(path=f"{warehouse}/item_features")))
    with torch.inference_mode():
        flat = model.encode_users(to_tensors({f.name: users[f.name] for f in spec.user_fields})).to_flat().numpy()
    now = dt.datetime.now(dt.UTC)
    n = len(flat)
    versions = np.array([version] * n, dtype=object)
    if other_version is not None:
        versions[other_version] = OTHER_VERSION
    rows = np.flatnonzero(with_state)
    state = pa.table({"user_id": pa.array(users["user_id"][rows].astype(np.int64)),
                      "model_version": pa.array(versions[rows].tolist(), pa.string()),
                      "state": list_column(flat[rows]),
                      "created_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
                      "event_ts": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC"))})
    if len(rows):
        write_arrow(store, "user_state", state)
    write_arrow(store, "user_features", to_arrow(users, user_features_contract(spec), updated_at=now))
    return flat


def candidate_records(items: dict[str, np.ndarray], context: dict[str, np.ndarray], rows: np.ndarray) -> list[dict]:
    """JSON candidate objects of item ``rows`` (item fields) with per-candidate ``context`` values."""
    cols = {**{k: v[rows] for k, v in items.items()}, **context}
    out = []
    for i in range(len(rows)):
        r = {}
        for k, v in cols.items():
            x = v[i]
            r[k] = [int(t) for t in x if t >= 0] if np.ndim(x) else x.item()
        out.append(r)
    return out
