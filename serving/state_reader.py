"""Read users' stored state from the online store: (model_version, flat state) per user.

``FeastStateReader`` asks Feast (``get_online_features`` on the state feature service): Feast
turns every float of a state into a Python float, one call each, and builds its response
protos around them. The lean readers (``SqliteStateReader``, ``RedisStateReader``) read the same
rows straight from the store Feast wrote, with Feast's own key and table naming, in one query
(one pipelined round trip) per batch of users, and view each state's packed float bytes as a
float32 array without converting element by element.
Both return what ``get_online_features(...).to_dict()`` holds for the two features:
``model_version`` (str or None) and ``state`` (float32 array or None) per user, in order.

Feast stays the registry and the writer: the state view, its features and its online store
come from the registry, and a store type without a lean read falls back to Feast.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from feature_store.definitions import STATE_SERVICE
from feature_store.online_write import _varint as varint_bytes

VERSION, STATE = "model_version", "state"  # the state view's two features (feature_store.definitions)
States = tuple[list[str | None], list[np.ndarray | None]]
SQLITE_KEYS_PER_QUERY = 10_000  # under SQLite's limit on bound parameters (32,766)

# A float list Value is the float_list_val field (length-delimited) holding a FloatList whose
# field 1 is the packed little-endian floats: tag, length, 0x0a, length, raw bytes.
_FLOAT_LIST_TAG = varint_bytes(Value.DESCRIPTOR.fields_by_name["float_list_val"].number << 3 | 2)


class OnlineStoreLayoutError(RuntimeError):
    """The online store does not hold the state view's table or rows where Feast puts them."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``buf[pos]``."""
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def float_list(value: bytes | None) -> np.ndarray | None:
    """A serialized float-list Value -> a read-only float32 view of its bytes (no copy); None for
    a missing or null Value. Anything not laid out as the packed form is parsed by protobuf."""
    if not value:
        return None
    try:
        if value.startswith(_FLOAT_LIST_TAG):
            outer, pos = _varint(value, len(_FLOAT_LIST_TAG))
            if pos + outer == len(value) and (outer == 0 or value[pos] == 0x0A):
                if outer == 0:
                    return np.zeros(0, dtype="<f4")
                inner, start = _varint(value, pos + 1)
                if start + inner == len(value) and inner % 4 == 0:
                    return np.frombuffer(value, dtype="<f4", count=inner // 4, offset=start)
    except IndexError:  # a truncated varint: let protobuf name the problem
        pass
    parsed = Value.FromString(value)
    if parsed.WhichOneof("val") is None:
        return None
    return np.asarray(parsed.float_list_val.val, dtype="<f4")


def string_value(value: bytes | None) -> str | None:
    if not value:
        return None
    parsed = Value.FromString(value)
    return parsed.string_val if parsed.WhichOneof("val") == "string_val" else None


def entity_keys(user_ids: Sequence[int], version: int) -> list[bytes]:
    """The serialized ``user_id`` entity keys, as Feast builds them for its online stores."""
    return [serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(u))]),
                                 entity_key_serialization_version=version) for u in user_ids]


def state_view(store: FeatureStore) -> FeatureView:
    """The feature view behind the state feature service (it must hold model_version and state)."""
    service = store.get_feature_service(STATE_SERVICE)
    (projection,) = service.feature_view_projections
    view = store.get_feature_view(projection.name)
    names = {f.name for f in view.features}
    if not {VERSION, STATE} <= names:
        raise OnlineStoreLayoutError(f"feature view {view.name!r} of {STATE_SERVICE} has features {sorted(names)}, "
                                     f"expected {VERSION!r} and {STATE!r}; rerun `ugsep features apply`")
    return view


class FeastStateReader:
    """States through ``FeatureStore.get_online_features`` (any online store)."""

    kind = "feast"

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.service = store.get_feature_service(STATE_SERVICE)

    def check(self) -> None:
        from feature_store.store import check_online_store

        check_online_store(self.store.config)

    def read(self, user_ids: Sequence[int]) -> States:
        resp = self.store.get_online_features(features=self.service,
                                              entity_rows=[{"user_id": int(u)} for u in user_ids]).to_dict()
        return resp[VERSION], [None if s is None else np.asarray(s, dtype="<f4") for s in resp[STATE]]


class SqliteStateReader:
    """States straight from Feast's SQLite table of the state view: one query per batch."""

    kind = "lean"

    def __init__(self, store: FeatureStore) -> None:
        config = store.config
        view = state_view(store)
        self.key_version = config.entity_key_serialization_version
        self.table = compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
        path = Path(config.online_store.path)
        path = path if path.is_absolute() or not config.repo_path else Path(config.repo_path) / path
        if not path.exists():
            raise OnlineStoreLayoutError(f"the SQLite online store {path} does not exist; run `ugsep features "
                                         "apply` and `ugsep materialize` for this warehouse")
        self.path = path
        self.check()
        # read-only, used from the scoring thread (check() opens its own)
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def check(self) -> None:
        """Raise OnlineStoreLayoutError unless the state view's table is there."""
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as conn:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (self.table,)).fetchone()
        if not found:
            raise OnlineStoreLayoutError(f"the SQLite online store {self.path} has no table {self.table!r}; "
                                         "run `ugsep features apply` for this warehouse")

    def read(self, user_ids: Sequence[int]) -> States:
        keys = entity_keys(user_ids, self.key_version)
        found: dict[tuple[bytes, str], bytes] = {}
        for i in range(0, len(keys), SQLITE_KEYS_PER_QUERY):
            part = keys[i:i + SQLITE_KEYS_PER_QUERY]
            found.update(((k, f), v) for k, f, v in self.conn.execute(
                f'SELECT entity_key, feature_name, value FROM "{self.table}" '
                f"WHERE entity_key IN ({','.join('?' * len(part))}) AND feature_name IN (?, ?)",
                [*part, VERSION, STATE]))
        return ([string_value(found.get((k, VERSION))) for k in keys],
                [float_list(found.get((k, STATE))) for k in keys])


class RedisStateReader:
    """States straight from Feast's Redis hashes: one pipelined HMGET per user, one round trip."""

    kind = "lean"

    def __init__(self, store: FeatureStore) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        config = store.config
        view = state_view(store)
        name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
        self.fields = [_mmh3(f"{name}:{VERSION}"), _mmh3(f"{name}:{STATE}")]
        self.suffix = config.project.encode("utf-8")
        self.key_version = config.entity_key_serialization_version
        self.client = RedisOnlineStore()._get_client(config.online_store)  # Feast's client: cluster, sentinel
        # one immediate retry (a dropped idle connection), not redis-py's backoff of seconds
        self.client.set_retry(Retry(NoBackoff(), 1))

    def check(self) -> None:
        self.client.ping()

    def read(self, user_ids: Sequence[int]) -> States:
        keys = [k + self.suffix for k in entity_keys(user_ids, self.key_version)]
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, self.fields)
            replies = pipe.execute()
        return [string_value(v) for v, _ in replies], [float_list(s) for _, s in replies]


def state_reader(store: FeatureStore, read: str = "lean"):
    """A reader for ``store``'s online store: ``lean`` (SQLite, Redis; others fall back to Feast)
    or ``feast``."""
    if read not in ("lean", "feast"):
        raise ValueError(f"read must be 'lean' or 'feast', got {read!r}")
    kind = getattr(store.config.online_store, "type", "")
    if read == "lean" and kind == "sqlite":
        return SqliteStateReader(store)
    if read == "lean" and kind == "redis":
        return RedisStateReader(store)
    return FeastStateReader(store)
