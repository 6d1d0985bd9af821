"""A score request from JSON: the user id and its candidates, checked field by field against the
model's spec and converted by the one Arrow -> numpy converter (``ugsep.data.arrow_columns``).

    {"user_id": 42, "candidates": [{"item_id": 7, "category": 3, "tags": [1, 5], "price": 9.5, ...}, ...]}

Each candidate carries the spec's candidate fields (item fields, then context fields); other
keys are ignored. The checks are the batch jobs' row checks (``jobs.validation``): a categorical
value is an integer, a dense one a finite number, an id list a list of integers (null: empty).
A bad value is a RequestError naming the field (``candidates[3].price``), what was expected
and what was found.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import chain

import numpy as np
import orjson

from ugsep.data.arrow_columns import arrow_columns, field_columns
from ugsep.features import FeatureSpec, Field, FieldKind

INT64 = (-(2**63), 2**63 - 1)
# a body's shape for finding long integer literals: digits -> "0", "." and exponent marks -> "." and
# "e", anything else -> " "; an integer literal of 19+ digits (one that may not fit 64 bits) starts
# where " " meets 19 "0"s
_SHAPE = bytes(48 if 48 <= b <= 57 else b if b in b".e" else 101 if b == 69 else 32 for b in range(256))
_LONG_INTEGER = b" " + b"0" * 19
_ZEROS = re.compile(rb"0*")
EXPECTED = {FieldKind.CATEGORICAL: "an integer id", FieldKind.DENSE: "a finite number",
            FieldKind.MULTI: "a list of integer ids (or null)"}


class RequestError(ValueError):
    """A request that cannot be scored as sent: ``field`` names the bad input, ``status`` is the
    HTTP status the service answers with (400 unreadable, 413 too large, 422 a bad value)."""

    def __init__(self, message: str, field: str = "", status: int = 422) -> None:
        super().__init__(message)
        self.field, self.status = field, status


class ItemFieldError(RequestError):
    """A candidate lacks a field the model reads."""


def bad_value(field: str, expected: str, found: object) -> RequestError:
    """``field: expected ..., found <the value as JSON>``."""
    try:
        text = json.dumps(found)
    except (TypeError, ValueError):
        text = repr(found)
    return RequestError(f"{field}: expected {expected}, found {text if len(text) <= 60 else text[:57] + '...'}",
                        field)


@dataclass
class ScoreRequest:
    user_id: int
    item_ids: list[int]
    items: dict[str, np.ndarray]  # the model's candidate columns, one row per candidate

    def __len__(self) -> int:
        return len(self.item_ids)


def _is_int(v: object) -> bool:
    return type(v) is int and INT64[0] <= v <= INT64[1]


def _is_number(v: object) -> bool:
    return (type(v) is float and math.isfinite(v)) or _is_int(v)


def _ints_fit(values: list) -> bool:
    """Every value an int (not a bool) within 64 bits, with C-level passes over the list."""
    return not values or (set(map(type, values)) == {int} and INT64[0] <= min(values) and max(values) <= INT64[1])


def _column_fits(values: list, f: Field) -> bool:
    """A fast whole-column form of ``_check_column``'s test: True only where every value fits
    (False may still be a good column: ``_check_column`` then looks value by value)."""
    if f.kind == FieldKind.CATEGORICAL:
        return _ints_fit(values)
    if f.kind == FieldKind.DENSE:
        return set(map(type, values)) == {float} and bool(np.isfinite(np.array(values, dtype=np.float64)).all())
    if not set(map(type, values)) <= {list, type(None)}:
        return False
    return _ints_fit(list(chain.from_iterable(v for v in values if v)))


def _check_column(values: list, f: Field, where: str) -> None:
    """Raise a RequestError at the first value of ``values`` that does not fit field ``f``."""
    if not _column_fits(values, f):
        _check_values(values, f, where)


def _check_values(values: list, f: Field, where: str) -> None:
    """``_check_column`` value by value: the reference verdict, and the one that names a bad value."""
    if f.kind == FieldKind.CATEGORICAL:
        ok = _is_int
    elif f.kind == FieldKind.DENSE:
        ok = _is_number
    else:
        def ok(v: object) -> bool:
            return v is None or (type(v) is list and all(_is_int(x) for x in v))
    if all(map(ok, values)):
        return
    i = next(i for i, v in enumerate(values) if not ok(v))
    raise bad_value(f"{where}[{i}].{f.name}", EXPECTED[f.kind], values[i])


def candidate_columns(records: list, spec: FeatureSpec, where: str = "candidates") -> dict[str, np.ndarray]:
    """JSON candidate objects -> the model's candidate columns (item fields, then context fields)."""
    for i, r in enumerate(records):
        if type(r) is not dict:
            raise bad_value(f"{where}[{i}]", "an object of candidate fields", r)
    values = {}
    for f in spec.candidate_fields:
        try:
            values[f.name] = [r[f.name] for r in records]
        except KeyError:
            i = next(i for i, r in enumerate(records) if f.name not in r)
            raise ItemFieldError(f"{where}[{i}].{f.name}: missing; every candidate needs the model's "
                                 f"{f.kind.value} field {f.name!r}", f"{where}[{i}].{f.name}") from None
        _check_column(values[f.name], f, where)
    return field_columns(arrow_columns(values, spec.candidate_fields), spec.candidate_fields)


def parse_request(body: bytes, spec: FeatureSpec, max_candidates: int) -> ScoreRequest:
    """The body of ``POST /score`` -> a ScoreRequest; a RequestError names what is wrong."""
    doc = _decode(body)
    if type(doc) is not dict:
        raise bad_value("body", 'a JSON object {"user_id": ..., "candidates": [...]}', doc)
    if "user_id" not in doc:
        raise RequestError("user_id: missing; expected an integer user id", "user_id")
    if not _is_int(doc["user_id"]):
        raise bad_value("user_id", "an integer user id", doc["user_id"])
    records = doc.get("candidates")
    if type(records) is not list or not records:
        raise bad_value("candidates", "a non-empty list of candidate objects", records)
    if len(records) > max_candidates:
        raise RequestError(f"candidates: expected at most {max_candidates} candidates per request "
                           f"(--max-candidates), found {len(records)}", "candidates", 413)
    items = candidate_columns(records, spec)
    ids = [r.get("item_id") for r in records]  # the response names each score's item
    if not _ints_fit(ids):
        i = next(i for i, v in enumerate(ids) if not _is_int(v))
        if "item_id" not in records[i]:
            raise ItemFieldError(f"candidates[{i}].item_id: missing; every candidate needs its item id",
                                 f"candidates[{i}].item_id")
        raise bad_value(f"candidates[{i}].item_id", "an integer item id", ids[i])
    return ScoreRequest(int(doc["user_id"]), ids, items)


def long_integer_literal(body: bytes) -> bool:
    """Whether ``body`` holds an integer literal of 19 or more digits. The digits of a fraction
    (0.0007486097165383399) or of a mantissa before its exponent make a float in either reader.
    Byte-level searches only: a regex scan of a 73 KB body takes about 1 ms, longer than orjson's read."""
    shape = (b" " + body).translate(_SHAPE)
    i = shape.find(_LONG_INTEGER)
    while i >= 0:
        end = _ZEROS.match(shape, i + 1).end()
        if shape[end : end + 1] not in (b".", b"e"):
            return True
        i = shape.find(_LONG_INTEGER, end)
    return False


def _decode(body: bytes) -> object:
    """JSON -> Python: orjson (faster), and the standard library where orjson would differ from
    it: what orjson refuses (NaN, deep nesting, bad bytes) is read or named by ``json``, and so is
    a body with an integer literal of 19 or more digits, since orjson reads an integer past 64 bits as a float
    (the checks then name the exact integer)."""
    if not long_integer_literal(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # bad JSON or bytes; nesting deeper than Python's stack
        raise RequestError(f"body: expected a JSON object, found invalid JSON ({type(e).__name__}: {e})"[:300],
                           "body", 400) from None
