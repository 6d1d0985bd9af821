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
The flat form concatenates these in that order: a fixed-width float vector per user.
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
            p.update(kv=(self.n_layers, 2, self.seq_len, self.d_model), valid=(self.seq_len,),
                     pre=(self.n_group_queries, self.d_model))
        return p

    @property
    def width(self) -> int:
        """Floats per user."""
        return sum(math.prod(shape) for shape in self.parts.values())

    def bytes_per_user(self, dtype: torch.dtype = torch.float32) -> int:
        """Storage of one user's state in ``dtype`` (float32 in the user_state table)."""
        return self.width * torch.empty(0, dtype=dtype).element_size()


@dataclass
class UserState:
    heads: Tensor
    comp: Tensor | None = None
    pooled: Tensor | None = None
    fm: Tensor | None = None
    kv: Tensor | None = None
    valid: Tensor | None = None
    pre: Tensor | None = None

    def __len__(self) -> int:
        return self.heads.shape[0]

    def _parts(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to_flat(self) -> Tensor:
        """(B, width) float tensor, for tables and feature stores."""
        return torch.cat([t.flatten(1) for t in self._parts().values()], dim=1)

    @classmethod
    def from_flat(cls, flat: Tensor, layout: StateLayout) -> UserState:
        if flat.dim() != 2 or flat.shape[1] != layout.width:
            raise ValueError(
                f"user state has shape {tuple(flat.shape)}, the model expects (B, {layout.width})"
            )
        shapes = layout.parts
        chunks = torch.split(flat, [math.prod(s) for s in shapes.values()], dim=1)
        return cls(**{name: c.reshape(flat.shape[0], *shape) for (name, shape), c in
                      zip(shapes.items(), chunks, strict=True)})

    def per_candidate(self, user_index: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(pooled, fm) gathered to each candidate's user, what the output reads besides the tokens."""
        return tuple(None if t is None else t[user_index] for t in (self.pooled, self.fm))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> UserState:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return UserState(**{name: mv(t) for name, t in self._parts().items()})
