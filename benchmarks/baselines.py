"""Classic CTR baselines on ugsep's feature spec, for ``benchmarks/quality.py``.

DeepFM (Guo et al., 2017) as DeepCTR-Torch builds it by default: one 16-wide embedding per
sparse field shared by the factorisation machine and the DNN, a first-order (linear) term per
field, dense fields fed to the linear term and the DNN, a (256, 128) ReLU DNN. Multi-valued
fields are mean-pooled (DeepCTR's ``mean`` combiner). It exposes ``score(users, items,
user_index)`` like ``RankingModel``, so ``ugsep.train.fit`` trains it with the same early stopping.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.features import PAD_ID, FeatureSpec, Field, FieldKind


class SparseEmbedding(nn.Module):
    """One field's embedding of width ``dim`` (B, dim): categorical looked up, multi mean-pooled."""

    def __init__(self, f: Field, dim: int) -> None:
        super().__init__()
        self.kind, self.buckets = f.kind, f.buckets
        self.table = nn.Embedding(f.buckets, dim)
        nn.init.normal_(self.table.weight, std=1e-4 if dim == 1 else 1e-2)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == FieldKind.CATEGORICAL:
            return self.table(torch.remainder(x.long(), self.buckets))
        valid = x != PAD_ID
        emb = self.table(torch.where(valid, torch.remainder(x.long(), self.buckets), 0)) * valid.unsqueeze(-1)
        return emb.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)


class DeepFM(nn.Module):
    def __init__(self, spec: FeatureSpec, dim: int = 16, hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        self.user_fields, self.item_fields = spec.user_fields, spec.candidate_fields
        fields = self.user_fields + self.item_fields
        sparse = [f for f in fields if f.kind != FieldKind.DENSE]
        self.dense_names = [f.name for f in fields if f.kind == FieldKind.DENSE]
        self.emb = nn.ModuleDict({f.name: SparseEmbedding(f, dim) for f in sparse})
        self.first = nn.ModuleDict({f.name: SparseEmbedding(f, 1) for f in sparse})
        self.dense_linear = nn.Linear(len(self.dense_names), 1) if self.dense_names else None
        layers, width = [], len(sparse) * dim + len(self.dense_names)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.dnn = nn.Sequential(*layers, nn.Linear(width, 1, bias=False))
        self.bias = nn.Parameter(torch.zeros(1))

    def score(self, users: dict[str, Tensor], items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        batch = {**{f.name: users[f.name][user_index] for f in self.user_fields},
                 **{f.name: items[f.name] for f in self.item_fields}}
        emb = torch.stack([m(batch[n]) for n, m in self.emb.items()], dim=1)  # (N, F, dim)
        first = sum(m(batch[n]) for n, m in self.first.items()).squeeze(-1)  # (N,)
        fm = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(-1)  # (N,) all pairwise dot products
        parts = [emb.flatten(1)]
        if self.dense_linear is not None:
            dense = torch.stack([_signed_log(batch[n]) for n in self.dense_names], dim=1)  # (N, n_dense)
            first = first + self.dense_linear(dense).squeeze(-1)
            parts.append(dense)
        return self.bias + first + fm + self.dnn(torch.cat(parts, dim=1)).squeeze(-1)

    forward = score


def _signed_log(x: Tensor) -> Tensor:
    """Dense values on a log scale, as ugsep's tokenizer reads them (NaN -> 0)."""
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=1e6, neginf=-1e6)
    return torch.sign(x) * torch.log1p(x.abs())
