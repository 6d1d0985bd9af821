"""Redis online-store writes from Spark's executors: each task writes the rows of its own partitions.

Sending every row through the driver caps materialization at one process and grows the
driver's memory with the users. Redis is a network service every executor can reach, so each
task opens one Redis client and writes its Arrow batches in pipelines; only a row count goes
back to the driver. An executor cannot read the Feast registry (a file of the driver on a
cluster), so the driver ships what the writer needs in the closure: the RepoConfig (online
store settings, project, entity key serialization) and the feature view as proto bytes.

What lands in Redis is byte for byte what Feast's ``RedisOnlineStore.online_write_batch``
writes with ``skip_dedup`` (as ``repo_config`` sets it): per entity one hash under Feast's
``_redis_key``, field ``_ts:<view>`` holding the event time as Timestamp bytes, one field
``_mmh3("<view>:<feature>")`` per feature holding the serialized Value, and the key's TTL
where one is configured. It is built from Arrow columns at about half Feast's CPU per row:
field names hashed once per view, not once per row; values serialized straight from the Arrow
buffers; one Timestamp per distinct event time (a day's rows share one). SQLite is one local
file of the driver: it is written from the driver (``online_write.write_arrow``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
from feast import FeatureView, RepoConfig
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.core.FeatureView_pb2 import FeatureView as FeatureViewProto
from google.protobuf.timestamp_pb2 import Timestamp

from feature_store.online_write import column_value_bytes, entity_keys, supports

ROWS_PER_PIPELINE = 2000  # rows per Redis pipeline: ~12 MB of commands buffered at a 1,536-float state
COUNT_SCHEMA = pa.schema([("rows", pa.int64())])
COUNT_DDL = "rows bigint"  # COUNT_SCHEMA, as mapInArrow takes it


def writes_from_executors(config: RepoConfig, view: FeatureView) -> bool:
    """True where each Spark task can write its own rows: a Redis online store that overwrites
    (``skip_dedup``: Feast's deduplicating writer reads the stored event times first) and a view
    whose columns the Arrow converter handles (Feast's pandas fallback runs on the driver)."""
    online = config.online_store
    return getattr(online, "type", None) == "redis" and online.skip_dedup and supports(view)


def redis_batch_writer(config: RepoConfig, view: FeatureView) -> Callable[[Iterable[pa.RecordBatch]],
                                                                        Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function writing a task's batches to ``view`` in the Redis online store
    of ``config``; it yields the task's row count (``COUNT_DDL``). Built on the driver, which
    reads the view from the registry once."""
    view_proto = view.to_proto().SerializeToString()

    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from write_batches(batches, config, view_proto)

    return write


def write_batches(batches: Iterable[pa.RecordBatch], config: RepoConfig, view_proto: bytes,
                  rows_per_pipeline: int = ROWS_PER_PIPELINE) -> Iterator[pa.RecordBatch]:
    """Write ``batches`` through one Redis client (one connection: the pipelines run one after
    another) and yield their row count as one batch of ``COUNT_SCHEMA``."""
    view = FeatureView.from_proto(FeatureViewProto.FromString(view_proto))
    # Feast's own client for this config: a node, a cluster or a sentinel's master
    client = RedisOnlineStore()._get_client(config.online_store)
    written = 0
    try:
        for batch in batches:
            for start in range(0, batch.num_rows, rows_per_pipeline):
                part = pa.Table.from_batches([batch.slice(start, rows_per_pipeline)])
                write_hashes(client, redis_hashes(part, view, config), config.online_store.key_ttl_seconds)
                written += part.num_rows
    finally:
        client.close()
    yield pa.RecordBatch.from_pydict({"rows": [written]}, schema=COUNT_SCHEMA)


def file_batch_writer(config: RepoConfig, view: FeatureView, columns: list[str],
                      event_default: dt.datetime) -> Callable[[Iterable[str]], Iterator[int]]:
    """An RDD ``mapPartitions`` function: each task reads its Parquet data files (URIs) with
    pyarrow, ``columns`` only, a null event time read as ``event_default``, and writes them as
    ``write_batches`` does; it yields its row count. Spark's conversion of each row (an array of
    floats per user) into Arrow for Python is skipped: the files already are columnar."""
    view_proto, event = view.to_proto().SerializeToString(), view.batch_source.timestamp_field

    def write(uris: Iterable[str]) -> Iterator[int]:
        batches = (b for uri in uris for b in parquet_batches(uri, columns, event, event_default))
        for counted in write_batches(batches, config, view_proto):
            yield counted.column(0)[0].as_py()

    return write


FILE_SCHEMES = {"file": "file", "s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "hdfs": "hdfs",
                "abfs": "abfs", "abfss": "abfs"}  # Hadoop's URI schemes -> pyarrow's filesystems


def readable_by_pyarrow(uri: str) -> bool:
    return uri.split(":", 1)[0] in FILE_SCHEMES


def parquet_batches(uri: str, columns: list[str], event: str, event_default: dt.datetime,
                    batch_rows: int = ROWS_PER_PIPELINE) -> Iterator[pa.RecordBatch]:
    """The rows of one Parquet file, ``batch_rows`` at a time (a file's memory stays bounded)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyarrow import fs

    scheme, rest = uri.split(":", 1)
    filesystem, path = fs.FileSystem.from_uri(f"{FILE_SCHEMES[scheme]}:{rest}")
    with filesystem.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
            i = batch.schema.get_field_index(event)
            default = pa.scalar(event_default, pa.timestamp("us", "UTC")).cast(batch.schema.field(i).type)
            filled = pc.fill_null(batch.column(i), default)
            yield batch.set_column(i, event, filled)


def write_hashes(client, hashes: Iterable[tuple[bytes, list[bytes]]], ttl_seconds: int | None) -> None:
    """One pipeline: HSET of each (key, [field, value, ...]), then EXPIRE where a TTL is set."""
    with client.pipeline(transaction=False) as pipe:
        for key, items in hashes:
            pipe.hset(key, items=items)
            if ttl_seconds:
                pipe.expire(name=key, time=ttl_seconds)
        pipe.execute()


def redis_hashes(table: pa.Table, view: FeatureView, config: RepoConfig) -> list[tuple[bytes, list[bytes]]]:
    """(Redis key, [field, value, ...]) per row of ``table``: what Feast's writer puts in Redis."""
    name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    fields = [f"_ts:{name}".encode()] + [_mmh3(f"{name}:{f.name}") for f in view.features]
    event = view.batch_source.timestamp_field
    columns = [event_time_bytes(table.column(event), event)]
    columns += [column_value_bytes(table.column(f.name), f.dtype.to_value_type()) for f in view.features]
    keys = [_redis_key(config.project, k, entity_key_serialization_version=config.entity_key_serialization_version)
            for k in entity_keys(table, view)]
    return [(key, [x for pair in zip(fields, values, strict=True) for x in pair])
            for key, values in zip(keys, zip(*columns, strict=True), strict=True)]


def event_time_bytes(col: pa.ChunkedArray, name: str) -> list[bytes]:
    """Each row's event time as serialized Timestamp bytes (a naive time is UTC, as in Feast);
    one Timestamp per distinct time."""
    micros = col.cast(pa.timestamp("us", col.type.tz), safe=False).cast(pa.int64()).to_pylist()
    if None in micros:
        raise ValueError(f"the event time column {name} has nulls: Feast's online store needs one per row")
    serialized: dict[int, bytes] = {}
    for us in set(micros):
        seconds, frac = divmod(us, 1_000_000)
        serialized[us] = Timestamp(seconds=seconds, nanos=frac * 1000).SerializeToString()
    return [serialized[us] for us in micros]
