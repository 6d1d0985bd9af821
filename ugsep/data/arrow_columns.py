"""The one converter between Arrow columns and the numpy field columns the model reads, with
the null, padding and truncation rules in one place: the Spark workers, the baseline, the online
scorer and the dataset readers all go through it. Pure, no Spark."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ugsep.features import PAD_ID, Field, FieldKind


def padded_lists(arr: pa.Array, max_len: int) -> np.ndarray:
    """list<int64> -> (B, max_len) int64, truncated and padded with PAD_ID; null lists are empty."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.fill_null(pc.list_flatten(arr), PAD_ID).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(values)) - np.repeat(starts, lengths)
    keep = pos < max_len
    out = np.full((len(lengths), max_len), PAD_ID, dtype=np.int64)
    out[rows[keep], pos[keep]] = values[keep]
    return out


ARROW_TYPE = {FieldKind.CATEGORICAL: pa.int64(), FieldKind.MULTI: pa.list_(pa.int64()),
              FieldKind.DENSE: pa.float64()}


def arrow_columns(values: Mapping[str, list], fields: tuple[Field, ...]) -> dict[str, pa.Array]:
    """Python values per field (JSON records, a feature store's answer; None for null) -> Arrow
    columns of the fields' types, ready for ``field_columns``."""
    try:
        return {f.name: pa.array(values[f.name], ARROW_TYPE[f.kind]) for f in fields}
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"a field value does not fit its kind: {e}") from None


def field_columns(cols: Mapping[str, pa.Array], fields: tuple[Field, ...]) -> dict[str, np.ndarray]:
    """Convert the Arrow columns of ``fields`` to the model's numpy layout."""
    out: dict[str, np.ndarray] = {}
    for f in fields:
        arr = cols[f.name]
        if f.kind == FieldKind.MULTI:
            out[f.name] = padded_lists(arr, f.max_len)
        elif f.kind == FieldKind.CATEGORICAL:
            out[f.name] = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            out[f.name] = pc.fill_null(arr, np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
    return out


def list_column(matrix: np.ndarray) -> pa.ListArray:
    """(B, W) float -> list<float> Arrow column."""
    b, w = matrix.shape
    offsets = pa.array(np.arange(0, (b + 1) * w, w, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))


def to_arrow_column(values: np.ndarray) -> pa.Array:
    """numpy field column -> Arrow: padded id lists become variable-length lists."""
    if values.ndim == 2:
        return pa.array([row[row != PAD_ID].tolist() for row in values], pa.list_(pa.int64()))
    if values.dtype.kind == "f":
        return pa.array(values.astype(np.float64))
    return pa.array(values.astype(np.int64))
