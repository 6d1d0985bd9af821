"""Feature spec: which fields feed the user side and which the item (group) side.

A batch is a plain ``dict[str, Tensor]`` keyed by field name:
- categorical: int64 ``(B,)`` raw ids; hashed into ``buckets`` with a modulo, so any id
  (unseen, negative, huge) maps to a valid row and never crashes the model.
- multi: int64 ``(B, max_len)`` raw ids padded with ``PAD_ID``; embeddings are mean-pooled
  over the non-pad entries (all-pad rows give a zero vector).
- dense: float32 ``(B,)``; non-finite values are rejected or clamped by ``DensePolicy``.
- sequence (``FeatureSpec.sequence_fields``: a user's recent events as parallel arrays):
  ``(B, L)`` per field, RIGHT-aligned (the most recent event at column L-1, padding first);
  categorical int64 with ``PAD_ID`` in padded slots, dense float32 with 0.0 there. The first
  sequence field is the event id: its ``PAD_ID`` slots are the mask of every sequence field.

Cross features (that depend on both user and item) are never user fields: the user side must
be computable from the user alone. Values of the (user, item) pair are context fields.
Sequence fields are user-side: built from events before the scoring day, one row per user
(snapshot), next to the user fields.
"""

from __future__ import annotations

import hashlib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from enum import Enum
from functools import cache
from typing import Any

import numpy as np

PAD_ID = -1


class FieldKind(str, Enum):
    CATEGORICAL = "categorical"
    MULTI = "multi"
    DENSE = "dense"


class DensePolicy(str, Enum):
    """What to do with NaN/inf in dense fields."""

    REJECT = "reject"  # raise, naming the field and the count of bad values
    CLAMP = "clamp"  # NaN -> 0, +-inf -> +-DENSE_CLIP


DENSE_CLIP = 1e6


class ConfigValueError(ValueError):
    """A dataclass field holds a value of the wrong type or out of its range (``check_fields``):
    ``key`` the field (``float_layers[1]`` for an element), ``value``, ``expected`` what fits."""

    def __init__(self, owner: str, key: str, value: Any, expected: str) -> None:
        super().__init__(f"{owner}: {key} = {value!r} is not {expected}")
        self.key, self.value, self.expected = key, value, expected


def check_fields(obj: Any, owner: str = "") -> None:
    """Check each dataclass field of ``obj`` against its type annotation, exactly: a bool is not
    an int and "64" is not an int (a float field takes an int); an enum takes a member or its
    value; a list or tuple is checked element by element; a dataclass wants an instance. The
    field's ``metadata`` declares its range: ``min`` (numbers), ``choices`` and ``non_empty``
    (strings). Raises ConfigValueError naming ``owner`` (default: the class) and the field."""
    hints = _field_types(type(obj))
    for f in fields(obj):
        _check(hints[f.name], getattr(obj, f.name), f.name, f.metadata, owner or type(obj).__name__)


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check(hint: Any, value: Any, key: str, bounds: Any, owner: str) -> None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    expected = _expected(hint, value, bounds)
    if expected:
        raise ConfigValueError(owner, key, value, expected)
    if typing.get_origin(hint) in (list, tuple):
        for i, item in enumerate(value):
            _check(typing.get_args(hint)[0], item, f"{key}[{i}]", {}, owner)


def _expected(hint: Any, value: Any, bounds: Any) -> str | None:
    """What ``value`` should have been, or None where it fits ``hint`` and ``bounds``."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        item = typing.get_args(hint)[0]
        return None if isinstance(value, list | tuple) else f"a list of {_PLURAL.get(item, item.__name__ + 's')}"
    if hint is dict or origin is dict:
        return None if isinstance(value, dict) else "an object"
    if hint is Any:
        return None
    if isinstance(hint, type) and issubclass(hint, Enum):
        values = [m.value for m in hint]
        ok = isinstance(value, hint) or (isinstance(value, str) and value in values)
        return None if ok else f"a valid {hint.__name__} (one of {values})"
    if is_dataclass(hint):
        return None if isinstance(value, hint) else f"a {hint.__name__}"
    if hint not in (bool, int, float, str):
        raise TypeError(f"check_fields cannot check a field of type {hint!r}")
    numeric = not isinstance(value, bool)  # a bool is an int to Python, never to a config
    ok, want = {
        bool: (isinstance(value, bool), "a boolean"),
        int: (numeric and isinstance(value, int), "an integer"),
        float: (numeric and isinstance(value, int | float), "a number"),
        str: (isinstance(value, str), "a string"),
    }[hint]
    if "min" in bounds:
        ok, want = ok and value >= bounds["min"], f"{want} >= {bounds['min']}"
    if "choices" in bounds:
        ok, want = ok and value in bounds["choices"], f"one of {list(bounds['choices'])}"
    if bounds.get("non_empty"):
        ok, want = ok and value != "", f"a non-empty {want.removeprefix('a ')}"
    return None if ok else want


_PLURAL = {str: "strings", int: "integers", float: "numbers"}


def at_least(low: float, default: Any) -> Any:
    """A dataclass field with a default, kept >= ``low`` by ``check_fields``."""
    return field(default=default, metadata={"min": low})


def one_of(choices: tuple[str, ...], default: str) -> Any:
    """A dataclass field with a default, kept among ``choices`` by ``check_fields``."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class Field:
    name: str = field(metadata={"non_empty": True})
    kind: FieldKind  # a FieldKind or its value
    buckets: int = at_least(1, 1000)  # hash buckets (categorical/multi); unused for dense
    dim: int = at_least(1, 16)  # embedding width; dense fields always contribute 1 value
    max_len: int = at_least(1, 1)  # padded list length (multi) or sequence length L (sequence fields)
    shares: str = ""  # sequence fields only: the item field whose embedding table this one reuses

    def __post_init__(self) -> None:
        check_fields(self, f"field {self.name!r}" if isinstance(self.name, str) else "Field")
        object.__setattr__(self, "kind", FieldKind(self.kind))

    @property
    def width(self) -> int:
        """Width this field contributes to its side's concatenated embedding."""
        return 1 if self.kind == FieldKind.DENSE else self.dim


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs, and through them the tables it reads (``jobs/contracts.py``):
    user fields (the user_features table, keyed by user_id), item fields (item_features, keyed
    by item_id) and context fields (columns of the candidates table: values of one (user,
    item) pair on one day, e.g. the item's recency for that user). The item tokenizer reads the
    item and context fields together (``candidate_fields``), item fields first.

    Sequence fields are a user's recent events as parallel ``(B, L)`` arrays, most recent last
    (see the module docstring); they are user-side columns. The first is the event id
    (categorical), whose padding masks them all; every one has ``max_len`` L. A sequence field
    may name an item field in ``shares`` to reuse its embedding table (``hist_item_id`` shares
    ``item_id``), so a past event and a candidate of the same item embed the same."""

    user_fields: tuple[Field, ...]
    item_fields: tuple[Field, ...]
    dense_policy: DensePolicy = DensePolicy.CLAMP
    context_fields: tuple[Field, ...] = ()
    sequence_fields: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self)
        for side in SIDES:
            object.__setattr__(self, side, tuple(getattr(self, side)))
        object.__setattr__(self, "dense_policy", DensePolicy(self.dense_policy))
        names = [f.name for side in SIDES for f in getattr(self, side)]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature spec declares fields twice: {sorted(dup)}")
        _check_sequences(self.sequence_fields)
        _check_shares(self)

    @property
    def candidate_fields(self) -> tuple[Field, ...]:
        """What a candidate row carries into the model: item fields, then context fields."""
        return self.item_fields + self.context_fields

    def with_history(self, seq_len: int, *side_fields: Field, item: str = "item_id") -> FeatureSpec:
        """This spec plus a history of ``seq_len`` events: the event id ``hist_<item>``, sharing
        the item field's embedding table, then ``side_fields`` (given ``max_len=seq_len``)."""
        target = next((f for f in self.item_fields if f.name == item), None)
        if target is None:
            raise ValueError(f"with_history: {item!r} is not an item field ({[f.name for f in self.item_fields]})")
        events = Field(f"hist_{item}", FieldKind.CATEGORICAL, target.buckets, target.dim, seq_len, shares=item)
        return replace(self, sequence_fields=(events, *(replace(f, max_len=seq_len) for f in side_fields)))

    @property
    def sequence_len(self) -> int:
        """L, the length of every sequence field; 0 where the spec has none."""
        return self.sequence_fields[0].max_len if self.sequence_fields else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dense_policy"] = self.dense_policy.value
        for side in ("context_fields", "sequence_fields"):  # the form of specs from before these sides:
            if not d[side]:  # their model versions stay
                del d[side]
        for side in SIDES:
            for f in d.get(side, []):
                f["kind"] = FieldKind(f["kind"]).value
                if not f["shares"]:  # likewise for fields from before ``shares``
                    del f["shares"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            user_fields=tuple(Field(**f) for f in d["user_fields"]),
            item_fields=tuple(Field(**f) for f in d["item_fields"]),
            dense_policy=DensePolicy(d.get("dense_policy", "clamp")),
            context_fields=tuple(Field(**f) for f in d.get("context_fields", ())),
            sequence_fields=tuple(Field(**f) for f in d.get("sequence_fields", ())),
        )


SIDES = ("user_fields", "item_fields", "context_fields", "sequence_fields")
SEQUENCE_KINDS = (FieldKind.CATEGORICAL, FieldKind.DENSE)


def _check_sequences(seq: tuple[Field, ...]) -> None:
    """Sequence fields are categorical or dense (a multi-valued event has no per-slot layout);
    the first is categorical, since its PAD_ID slots are the mask of all; all share one L."""
    for f in seq:
        if f.kind not in SEQUENCE_KINDS:
            raise ValueError(f"sequence field {f.name!r} is {f.kind.value}; a sequence field is categorical or dense")
    if seq and seq[0].kind != FieldKind.CATEGORICAL:
        raise ValueError(f"the first sequence field {seq[0].name!r} is the event id whose padding masks the others: "
                         f"it must be categorical, not {seq[0].kind.value}")
    if len({f.max_len for f in seq}) > 1:
        lengths = ", ".join(f"{f.name}={f.max_len}" for f in seq)
        raise ValueError(f"sequence fields must have one length (max_len), got {lengths}")


def _check_shares(spec: FeatureSpec) -> None:
    """``shares`` only on sequence fields, naming an item field with the very table shape:
    both categorical, the same buckets and dim (one embedding table serves both)."""
    for side in SIDES:
        for f in getattr(spec, side):
            if f.shares and side != "sequence_fields":
                raise ValueError(f"field {f.name!r} ({side}) shares {f.shares!r}: only sequence fields share "
                                 f"an item field's embedding table")
    items = {f.name: f for f in spec.item_fields}
    for f in spec.sequence_fields:
        if not f.shares:
            continue
        target = items.get(f.shares)
        if target is None:
            raise ValueError(f"sequence field {f.name!r} shares {f.shares!r}, which is not an item field "
                             f"(item fields: {sorted(items)})")
        diff = [f"{k} {getattr(f, k)} vs {getattr(target, k)}" for k in ("buckets", "dim")
                if getattr(f, k) != getattr(target, k)]
        if {f.kind, target.kind} != {FieldKind.CATEGORICAL}:
            diff.insert(0, f"kind {f.kind.value} vs {target.kind.value}")
        if diff:
            raise ValueError(f"sequence field {f.name!r} shares item field {target.name!r}, which needs both "
                             f"categorical with the same buckets and dim; they differ in: {', '.join(diff)}")


def non_key_columns(fields: tuple[Field, ...], key: str) -> list[str]:
    """Names of a side's fields other than its join key (the columns joined onto the key)."""
    return [f.name for f in fields if f.name != key]


def stable_id(values: Any) -> np.ndarray:
    """Map strings (or anything with a str()) to int64 ids that are stable across processes.

    Python's ``hash`` is salted per process; ids written by one Spark worker must match
    ids computed by another, so use a keyed digest instead.
    """
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        digest = hashlib.blake2b(str(v).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little", signed=True)
    return out

