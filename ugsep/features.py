"""Feature spec: which fields feed the user side and which the item (group) side.

A batch is a plain ``dict[str, Tensor]`` keyed by field name:
- categorical: int64 ``(B,)`` raw ids; hashed into ``buckets`` with a modulo, so any id
  (unseen, negative, huge) maps to a valid row and never crashes the model.
- multi: int64 ``(B, max_len)`` raw ids padded with ``PAD_ID``; embeddings are mean-pooled
  over the non-pad entries (all-pad rows give a zero vector).
- dense: float32 ``(B,)``; non-finite values are rejected or clamped by ``DensePolicy``.

Cross features (that depend on both user and item) are never user fields: the user side must
be computable from the user alone. Values of the (user, item) pair are context fields.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from enum import Enum
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


@dataclass(frozen=True)
class Field:
    name: str
    kind: FieldKind
    buckets: int = 1000  # hash buckets (categorical/multi); unused for dense
    dim: int = 16  # embedding width; dense fields always contribute 1 value
    max_len: int = 1  # padded list length (multi only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FieldKind(self.kind))
        if self.kind != FieldKind.DENSE and self.buckets < 1:
            raise ValueError(f"field {self.name!r}: buckets must be >= 1")

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
    item and context fields together (``candidate_fields``), item fields first."""

    user_fields: tuple[Field, ...]
    item_fields: tuple[Field, ...]
    dense_policy: DensePolicy = DensePolicy.CLAMP
    context_fields: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        for side in SIDES:
            object.__setattr__(self, side, tuple(getattr(self, side)))
        object.__setattr__(self, "dense_policy", DensePolicy(self.dense_policy))
        names = [f.name for side in SIDES for f in getattr(self, side)]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature spec declares fields twice: {sorted(dup)}")

    @property
    def candidate_fields(self) -> tuple[Field, ...]:
        """What a candidate row carries into the model: item fields, then context fields."""
        return self.item_fields + self.context_fields

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dense_policy"] = self.dense_policy.value
        if not self.context_fields:  # the form of specs from before context fields: their versions stay
            del d["context_fields"]
        for side in SIDES:
            for f in d.get(side, []):
                f["kind"] = FieldKind(f["kind"]).value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            user_fields=tuple(Field(**f) for f in d["user_fields"]),
            item_fields=tuple(Field(**f) for f in d["item_fields"]),
            dense_policy=DensePolicy(d.get("dense_policy", "clamp")),
            context_fields=tuple(Field(**f) for f in d.get("context_fields", ())),
        )


SIDES = ("user_fields", "item_fields", "context_fields")


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

