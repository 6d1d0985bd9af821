"""The one converter between Arrow columns and the numpy field columns the model reads, with
the null, padding and truncation rules in one place: the Spark workers, the baseline, the online
scorer and the dataset readers all go through it. Pure, no Spark.

Sequence fields (``FeatureSpec.sequence_fields``, ``sequence=True`` below) are Arrow lists of
one user's events, oldest first and of any length (``list<int64>`` categorical, ``list<double>``
dense); the model reads them as ``(B, L)`` right-aligned: the most recent event at column L-1."""

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


def right_aligned(arr: pa.Array, max_len: int, kind: FieldKind) -> np.ndarray:
    """A sequence column -> (B, max_len): list<int64> (categorical) gives int64 padded with
    PAD_ID, list<double> (dense) float32 padded with 0.0; each list (oldest first) keeps its last
    ``max_len`` events, the most recent at column max_len - 1. A null list is no events; a null
    event is PAD_ID (categorical) or NaN (dense, for the DensePolicy to judge) like other fields."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    fill, dtype, pad = (PAD_ID, np.int64, PAD_ID) if kind == FieldKind.CATEGORICAL else (np.nan, np.float32, 0.0)
    values = pc.fill_null(pc.list_flatten(arr), fill).to_numpy(zero_copy_only=False).astype(dtype)
    ends = np.cumsum(lengths)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    age = np.repeat(ends, lengths) - 1 - np.arange(len(values))  # 0 for each list's last event
    keep = age < max_len
    out = np.full((len(lengths), max_len), pad, dtype=dtype)
    out[rows[keep], max_len - 1 - age[keep]] = values[keep]
    return out


ARROW_TYPE = {FieldKind.CATEGORICAL: pa.int64(), FieldKind.MULTI: pa.list_(pa.int64()),
              FieldKind.DENSE: pa.float64()}
SEQUENCE_ARROW_TYPE = {FieldKind.CATEGORICAL: pa.list_(pa.int64()), FieldKind.DENSE: pa.list_(pa.float64())}


def arrow_columns(values: Mapping[str, list], fields: tuple[Field, ...], sequence: bool = False) -> dict[str, pa.Array]:
    """Python values per field (JSON records, a feature store's answer; None for null) -> Arrow
    columns of the fields' types, ready for ``field_columns``. ``sequence``: ``fields`` are
    sequence fields, each value a list of events, oldest first."""
    types = SEQUENCE_ARROW_TYPE if sequence else ARROW_TYPE
    try:
        return {f.name: pa.array(values[f.name], types[f.kind]) for f in fields}
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"a field value does not fit its kind: {e}") from None


def field_columns(cols: Mapping[str, pa.Array], fields: tuple[Field, ...], sequence: bool = False
                  ) -> dict[str, np.ndarray]:
    """Convert the Arrow columns of ``fields`` to the model's numpy layout. ``sequence``: they
    are sequence fields (``right_aligned``); the first is the event id, and every other must
    hold as many events as it in each row (its padding is their mask), else a ValueError."""
    if sequence:
        return _sequence_columns(cols, fields)
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


def _sequence_columns(cols: Mapping[str, pa.Array], fields: tuple[Field, ...]) -> dict[str, np.ndarray]:
    lengths = {f.name: pc.fill_null(pc.list_value_length(cols[f.name]), 0) for f in fields}
    for f in fields[1:]:
        bad = pc.sum(pc.not_equal(lengths[f.name], lengths[fields[0].name])).as_py() or 0
        if bad:
            raise ValueError(f"sequence field {f.name!r} has another event count than the event id field "
                             f"{fields[0].name!r} in {bad} rows; parallel event lists must have equal lengths")
    return {f.name: right_aligned(cols[f.name], f.max_len, f.kind) for f in fields}


def sequence_arrow_columns(cols: Mapping[str, np.ndarray], fields: tuple[Field, ...]) -> dict[str, pa.Array]:
    """The inverse of ``field_columns(..., sequence=True)``: (B, L) right-aligned columns ->
    variable-length Arrow lists, oldest first, of each row's events. The event id field (the
    first) marks them by its non-PAD_ID slots, which is how dense padding (0.0) is told from a
    real 0.0."""
    valid = np.asarray(cols[fields[0].name]) != PAD_ID  # (B, L)
    offsets = pa.array(np.r_[0, np.cumsum(valid.sum(1))].astype(np.int32))
    return {f.name: pa.ListArray.from_arrays(offsets, pa.array(np.asarray(cols[f.name])[valid],
                                                                SEQUENCE_ARROW_TYPE[f.kind].value_type))
            for f in fields}


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
