"""Arrow rows straight into the Feast online store.

``FeatureStore.write_to_online_store`` converts every value through Feast's generic type map
(one Python call per float of every state vector), which dominates materialization time.
Here each column is converted once, by its declared Feast type, into the same protos Feast
builds, and handed to the provider's ``online_write_batch`` (SQLite, Redis, any online store).
The executors' Redis writer (``redis_write``) takes the same conversion already serialized
(``column_value_bytes``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from feast import FeatureStore, FeatureView, ValueType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, Int32List, Int64List, StringList, Value

SCALAR_FIELD = {ValueType.INT64: "int64_val", ValueType.INT32: "int32_val", ValueType.FLOAT: "float_val",
                ValueType.DOUBLE: "double_val", ValueType.STRING: "string_val", ValueType.BOOL: "bool_val"}
LIST_FIELD = {ValueType.FLOAT_LIST: ("float_list_val", FloatList),
              ValueType.DOUBLE_LIST: ("double_list_val", DoubleList),
              ValueType.INT64_LIST: ("int64_list_val", Int64List),
              ValueType.INT32_LIST: ("int32_list_val", Int32List),
              ValueType.STRING_LIST: ("string_list_val", StringList)}


def supports(view: FeatureView) -> bool:
    """True when every feature and join key of ``view`` has a type this module converts."""
    types = [f.dtype.to_value_type() for f in view.features] + [e.dtype.to_value_type() for e in view.entity_columns]
    return all(t in SCALAR_FIELD or t in LIST_FIELD for t in types)


def column_values(col: pa.ChunkedArray | pa.Array, value_type: ValueType) -> list[Value]:
    """One Feast Value per row of ``col``, typed as ``value_type``; a null is an empty Value."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = _valid(arr)
    if value_type in SCALAR_FIELD:
        name = SCALAR_FIELD[value_type]
        return [Value(**{name: v}) if ok else Value() for v, ok in zip(arr.to_pylist(), valid, strict=True)]
    name, list_type = LIST_FIELD[value_type]
    if value_type in PACKED_FIXED:
        return _packed_fixed_values(arr, name, PACKED_FIXED[value_type], valid)
    if value_type == ValueType.STRING_LIST:
        rows = arr.to_pylist()
    else:  # slice the flat values once instead of converting row by row
        offsets = np.asarray(arr.offsets)
        flat = np.asarray(arr.values.fill_null(0)).tolist()
        rows = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return [Value(**{name: list_type(val=r)}) if ok else Value() for r, ok in zip(rows, valid, strict=True)]


def _valid(arr: pa.Array) -> np.ndarray:
    return np.ones(len(arr), dtype=bool) if arr.null_count == 0 else ~np.asarray(arr.is_null())


# Float and double lists are packed fixed-width on the wire: a row's bytes are its slice of the
# Arrow buffer, so the protobuf runtime parses them in C instead of Python building each float.
PACKED_FIXED = {ValueType.FLOAT_LIST: np.dtype("<f4"), ValueType.DOUBLE_LIST: np.dtype("<f8")}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _packed_fixed_values(arr: pa.ListArray, name: str, dtype: np.dtype, valid: np.ndarray) -> list[Value]:
    return [Value.FromString(b) for b in _packed_fixed_bytes(arr, name, dtype, valid)]


def _packed_fixed_bytes(arr: pa.ListArray, name: str, dtype: np.dtype, valid: np.ndarray) -> list[bytes]:
    """Each row's serialized Value, cut from the Arrow buffer; a null is an empty Value (no bytes)."""
    tag = _varint(Value.DESCRIPTOR.fields_by_name[name].number << 3 | 2)  # length-delimited field
    raw = np.asarray(arr.values.fill_null(0), dtype=dtype).tobytes()
    offsets = np.asarray(arr.offsets) * dtype.itemsize
    out = []
    for a, b, ok in zip(offsets[:-1].tolist(), offsets[1:].tolist(), valid, strict=True):
        if not ok:
            out.append(b"")
            continue
        inner = b"\x0a" + _varint(b - a) + raw[a:b]  # FloatList/DoubleList: field 1, packed
        out.append(tag + _varint(len(inner)) + inner)
    return out


def column_value_bytes(col: pa.ChunkedArray | pa.Array, value_type: ValueType) -> list[bytes]:
    """``column_values`` serialized, without building the protos of packed float and double lists."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if value_type in PACKED_FIXED:
        return _packed_fixed_bytes(arr, LIST_FIELD[value_type][0], PACKED_FIXED[value_type], _valid(arr))
    return [v.SerializeToString() for v in column_values(arr, value_type)]


def entity_keys(table: pa.Table, view: FeatureView) -> list[EntityKey]:
    """The EntityKey of each row of ``table``, from ``view``'s join key columns, as Feast builds it."""
    keys = [(e.name, column_values(table.column(e.name), e.dtype.to_value_type())) for e in view.entity_columns]
    names = [k for k, _ in keys]
    return [EntityKey(join_keys=names, entity_values=list(v)) for v in zip(*(v for _, v in keys), strict=True)]


def arrow_to_online_rows(table: pa.Table, view: FeatureView) -> list[tuple]:
    """(entity key, {feature: Value}, event time, created time) per row, as Feast's ingestion builds them."""
    feats = {f.name: column_values(table.column(f.name), f.dtype.to_value_type()) for f in view.features}
    rows = [dict(zip(feats, v, strict=True)) for v in zip(*feats.values(), strict=True)]
    event = table.column(view.batch_source.timestamp_field).to_pylist()
    created_col = view.batch_source.created_timestamp_column
    created = table.column(created_col).to_pylist() if created_col else [None] * table.num_rows
    return list(zip(entity_keys(table, view), rows, event, created, strict=True))


def write_arrow(store: FeatureStore, view_name: str, table: pa.Table) -> int:
    """Write ``table`` (join keys, features, timestamp column) to the online store of ``view_name``."""
    view = store.get_feature_view(view_name)
    if not supports(view):
        store.write_to_online_store(view_name, table.to_pandas())
        return table.num_rows
    # the provider is Feast's own writer behind write_to_online_store; only the conversion is ours
    store._get_provider().online_write_batch(store.config, view, arrow_to_online_rows(table, view), progress=None)
    return table.num_rows
