"""Factorisation-machine interaction (DeepFM's first- and second-order terms), split like UG-Sep.

Every sparse field f (categorical or multi) of either side has, per id, a first-order weight
w_f and a factor v_f of width k. The FM logit is sum_f w_f + sum_{f<f'} <v_f, v_f'>. Split by
side, with s the sum of a side's factors and q = (|s|^2 - sum_f |v_f|^2) / 2 its own pairs:

    sum_{f<f'} <v_f, v_f'> = q_user + q_cand + <s_user, s_cand>

So a user contributes (s_user, w_user + q_user), k + 1 numbers computed once per user and kept
in the user state, and each candidate adds its own pair and one dot product: the split stays
exact. Dense fields stay with the tokens. The tables are the FM's own (the tokenizer's
embeddings have per-field widths; an FM needs one width).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.features import Field, FieldKind
from ugsep.tokenizer import embed_ids


class SideFM(nn.Module):
    """One side's sparse fields -> (B, k + 1): the factor sum s, then w + q."""

    def __init__(self, fields: tuple[Field, ...], dim: int) -> None:
        super().__init__()
        self.plan = tuple((f.name, f.kind, f.buckets) for f in fields if f.kind != FieldKind.DENSE)
        if not self.plan:
            raise ValueError(f"fm_dim > 0 needs a categorical or multi field on each side; {[f.name for f in fields]} "
                             "are all dense")
        self.tables = nn.ModuleDict({name: nn.Embedding(b, dim + 1) for name, _, b in self.plan})  # [v | w]
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=0.01)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        e = torch.stack([embed_ids(self.tables[n], k, b, batch[n]) for n, k, b in self.plan], dim=1)  # (B, F, k+1)
        v, w = e[..., :-1], e[..., -1]
        s = v.sum(1)  # (B, k)
        own = w.sum(1) + 0.5 * (s.pow(2).sum(-1) - v.pow(2).sum((1, 2)))  # (B,)
        return torch.cat([s, own.unsqueeze(-1)], dim=-1)


def fm_logit(user: Tensor, cand: Tensor) -> Tensor:
    """(N, k + 1) user part (gathered per candidate) and candidate part -> (N,) FM logit."""
    return user[:, -1] + cand[:, -1] + (user[:, :-1] * cand[:, :-1]).sum(-1)
