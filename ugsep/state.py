"""UserState: what the group side needs from the user side, per user, and its flat form.

Stored per user (L layers, T_u user tokens, T_g group tokens, head width d = D / T):
- heads: (B, L, T_u, T_g, d)  the heads of each layer's input user tokens that group
  positions read in mixing (user positions' own heads are not needed downstream)
- comp:  (B, L, T_g, D)       information-compensation term per layer (if enabled)
- pooled: (B, D)              sum of the final user tokens (only when the head pools all tokens)
- fm: (B, k + 1)              the user's part of the FM interaction (only with ``fm_dim`` = k > 0)
The flat form concatenates these in that order: a fixed-width float vector per user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    def width(self) -> int:
        w = math.prod(self.heads_shape)
        w += math.prod(self.comp_shape) if self.has_comp else 0
        return w + (self.d_model if self.has_pooled else 0) + self.fm_width


@dataclass
class UserState:
    heads: Tensor
    comp: Tensor | None = None
    pooled: Tensor | None = None
    fm: Tensor | None = None

    def __len__(self) -> int:
        return self.heads.shape[0]

    def to_flat(self) -> Tensor:
        """(B, width) float tensor, for tables and feature stores."""
        parts = [self.heads.flatten(1)]
        parts += [t.flatten(1) for t in (self.comp, self.pooled, self.fm) if t is not None]
        return torch.cat(parts, dim=1)

    @classmethod
    def from_flat(cls, flat: Tensor, layout: StateLayout) -> UserState:
        if flat.dim() != 2 or flat.shape[1] != layout.width:
            raise ValueError(
                f"user state has shape {tuple(flat.shape)}, the model expects (B, {layout.width})"
            )
        b = flat.shape[0]
        sizes = [math.prod(layout.heads_shape)]
        sizes += [math.prod(layout.comp_shape)] if layout.has_comp else []
        sizes += [layout.d_model] if layout.has_pooled else []
        sizes += [layout.fm_width] if layout.fm_width else []
        parts = list(torch.split(flat, sizes, dim=1))
        heads = parts.pop(0).reshape(b, *layout.heads_shape)
        comp = parts.pop(0).reshape(b, *layout.comp_shape) if layout.has_comp else None
        pooled = parts.pop(0) if layout.has_pooled else None
        fm = parts.pop(0) if layout.fm_width else None
        return cls(heads, comp, pooled, fm)

    def per_candidate(self, user_index: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(pooled, fm) gathered to each candidate's user, what the output reads besides the tokens."""
        return tuple(None if t is None else t[user_index] for t in (self.pooled, self.fm))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> UserState:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return UserState(mv(self.heads), mv(self.comp), mv(self.pooled), mv(self.fm))
