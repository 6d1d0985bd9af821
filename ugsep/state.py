"""UserState: what the group side needs from the user side, per user, and its flat form.

Stored per user (L layers, T_u user tokens, T_g group tokens, head width d = D / T):
- heads: (B, L, T_u, T_g, d)  the heads of each layer's input user tokens that group
  positions read in mixing (user positions' own heads are not needed downstream)
- comp:  (B, L, T_g, D)       information-compensation term per layer (if enabled)
- pooled: (B, D)              sum of the final user tokens (only when the head pools all tokens)
- fm: (B, k + 1)              the user's part of the FM interaction (only with ``fm_dim`` = k > 0)
hyformer adds (S = sequence length, N_g candidate queries):
- kv: (B, L, 2, S, D)         each layer's keys and values of the user's sequence
- valid: (B, S)               1.0 where the sequence has an event, 0.0 in padding
- pre: (B, N_g, D)            the user part of the candidate queries' first linear
with CollectiveKV (``ugsep.collective_kv``) the K/V are kept compressed instead of ``kv``:
- kv_index: (B, L, 2, S)      the K and V pool rows of each position (integers)
- kv_user: (B, L, 2, S, d_u)  the user-specific dimensions of K and V
The flat form concatenates these in that order: a fixed-width float32 vector per user (pool
indices are exact in float32 below 2**24).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class StateLayout:
    n_layers: int
    n_user: int
    n_group: int
    d_model: int
    has_comp: bool
    has_pooled: bool
    fm_width: int = 0
    seq_len: int = 0  # hyformer: the sequence parts below exist when > 0
    n_group_queries: int = 0
    kv_user_dim: int = 0  # CollectiveKV: K/V kept as pool indices + this many user dims (0: plain K/V)
    kv_pool_size: int = 0

    @property
    def head_dim(self) -> int:
        return self.d_model // (self.n_user + self.n_group)

    @property
    def heads_shape(self) -> tuple[int, ...]:
        return (self.n_layers, self.n_user, self.n_group, self.head_dim)

    @property
    def comp_shape(self) -> tuple[int, ...]:
        return (self.n_layers, self.n_group, self.d_model)

    @property
    def parts(self) -> dict[str, tuple[int, ...]]:
        """Name -> per-user shape of each part present, in the flat form's order. Every part has
        the flat form's dtype (float32 in tables; ``valid`` holds 0.0/1.0)."""
        p = {"heads": self.heads_shape}
        p.update({"comp": self.comp_shape} if self.has_comp else {})
        p.update({"pooled": (self.d_model,)} if self.has_pooled else {})
        p.update({"fm": (self.fm_width,)} if self.fm_width else {})
        if self.seq_len:
            kv = {"kv": (self.n_layers, 2, self.seq_len, self.d_model)} if not self.kv_user_dim else {}
            p.update(kv, valid=(self.seq_len,), pre=(self.n_group_queries, self.d_model))
            if self.kv_user_dim:
                p.update(kv_index=(self.n_layers, 2, self.seq_len),
                         kv_user=(self.n_layers, 2, self.seq_len, self.kv_user_dim))
        return p

    @property
    def index_dtype(self) -> torch.dtype:
        """The narrowest integer type that holds a pool index (how packed storage keeps them)."""
        return torch.int16 if self.kv_pool_size <= 2**15 else torch.int32

    @property
    def width(self) -> int:
        """Floats per user."""
        return sum(math.prod(shape) for shape in self.parts.values())

    def bytes_per_user(self, dtype: torch.dtype = torch.float32) -> int:
        """Storage of one user's state with its values in ``dtype`` and pool indices in
        ``index_dtype`` (float32 values in the user_state table)."""
        size = {name: math.prod(shape) for name, shape in self.parts.items()}
        index = size.pop("kv_index", 0)
        return sum(size.values()) * dtype.itemsize + index * self.index_dtype.itemsize

    def kv_bytes_per_user(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """What the sequence K/V take per user as kept: plain K/V in ``dtype``, or CollectiveKV's
        indices (``index_dtype``) and user dims (``dtype``)."""
        size = {name: math.prod(shape) for name, shape in self.parts.items()}
        return (size.get("kv", 0) + size.get("kv_user", 0)) * dtype.itemsize + \
            size.get("kv_index", 0) * self.index_dtype.itemsize

    def uncompressed_kv_bytes_per_user(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """The plain K/V of every layer in ``dtype``: what CollectiveKV replaces."""
        return self.n_layers * 2 * self.seq_len * self.d_model * dtype.itemsize


@dataclass
class UserState:
    heads: Tensor
    comp: Tensor | None = None
    pooled: Tensor | None = None
    fm: Tensor | None = None
    kv: Tensor | None = None
    valid: Tensor | None = None
    pre: Tensor | None = None
    kv_index: Tensor | None = None
    kv_user: Tensor | None = None

    def __len__(self) -> int:
        return self.heads.shape[0]

    def _parts(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to_flat(self) -> Tensor:
        """(B, width) float32 tensor, for tables and feature stores."""
        return torch.cat([t.flatten(1).float() for t in self._parts().values()], dim=1)

    @classmethod
    def from_flat(cls, flat: Tensor, layout: StateLayout, dtype: torch.dtype | None = None) -> UserState:
        """The parts of ``to_flat``'s rows, values in ``dtype`` (default: the flat form's), pool
        indices as int64 (cast the flat form itself no narrower than float32: it holds the indices)."""
        if flat.dim() != 2 or flat.shape[1] != layout.width:
            raise ValueError(
                f"user state has shape {tuple(flat.shape)}, the model expects (B, {layout.width})"
            )
        shapes = layout.parts
        chunks = torch.split(flat, [math.prod(s) for s in shapes.values()], dim=1)
        parts = {name: c.reshape(flat.shape[0], *shape)
                 for (name, shape), c in zip(shapes.items(), chunks, strict=True)}
        parts = {name: t.long() if name == "kv_index" else t.to(dtype or t.dtype) for name, t in parts.items()}
        return cls(**parts)

    def per_candidate(self, user_index: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(pooled, fm) gathered to each candidate's user, what the output reads besides the tokens."""
        return tuple(None if t is None else t[user_index] for t in (self.pooled, self.fm))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> UserState:
        def mv(t: Tensor | None) -> Tensor | None:  # indices keep their integer type
            return None if t is None else t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return UserState(**{name: mv(t) for name, t in self._parts().items()})
