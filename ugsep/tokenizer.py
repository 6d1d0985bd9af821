"""RankMixer-style tokenizer: embed one side's fields, concatenate, cut into T chunks,
project each chunk to a width-D token with its own weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugsep.features import DENSE_CLIP, PAD_ID, DensePolicy, Field, FieldKind
from ugsep.layers import PerTokenLinear


class FieldEmbedder(nn.Module):
    """Turns a dict of raw field tensors into one (B, F) float tensor."""

    def __init__(self, fields: tuple[Field, ...], dense_policy: DensePolicy) -> None:
        super().__init__()
        self.fields = fields
        self.dense_policy = dense_policy
        self.tables = nn.ModuleDict(
            {f.name: nn.Embedding(f.buckets, f.dim) for f in fields if f.kind != FieldKind.DENSE}
        )
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=0.05)
        self.width = sum(f.width for f in fields)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([self._embed(f, _get(batch, f.name)) for f in self.fields], dim=-1)

    def _embed(self, f: Field, x: Tensor) -> Tensor:
        if f.kind == FieldKind.CATEGORICAL:
            return self.tables[f.name](torch.remainder(x.long(), f.buckets))
        if f.kind == FieldKind.MULTI:
            return self._mean_pool(f, x.long())
        return _dense(f.name, x, self.dense_policy).unsqueeze(-1)

    def _mean_pool(self, f: Field, ids: Tensor) -> Tensor:
        # ids: (B, L) padded with PAD_ID
        valid = ids != PAD_ID
        emb = self.tables[f.name](torch.where(valid, torch.remainder(ids, f.buckets), 0))
        emb = emb * valid.unsqueeze(-1)  # (B, L, dim)
        return emb.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)


def _get(batch: dict[str, Tensor], name: str) -> Tensor:
    try:
        return batch[name]
    except KeyError:
        raise KeyError(f"batch is missing field {name!r} (has {sorted(batch)})") from None


def _dense(name: str, x: Tensor, policy: DensePolicy) -> Tensor:
    """Apply the non-finite policy, then a signed log1p so counts and prices share a scale."""
    x = x.float()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        if policy == DensePolicy.REJECT:
            raise ValueError(f"dense field {name!r} has {int(bad.sum())} NaN/inf values")
        x = torch.nan_to_num(x, nan=0.0, posinf=DENSE_CLIP, neginf=-DENSE_CLIP)
    x = x.clamp(-DENSE_CLIP, DENSE_CLIP)
    return torch.sign(x) * torch.log1p(x.abs())


class Tokenizer(nn.Module):
    """(fields of one side) -> (B, T, D) tokens."""

    def __init__(
        self, fields: tuple[Field, ...], n_tokens: int, d_model: int, dense_policy: DensePolicy
    ) -> None:
        super().__init__()
        self.embed = FieldEmbedder(fields, dense_policy)
        self.n_tokens = n_tokens
        self.chunk = math.ceil(self.embed.width / n_tokens)
        self.proj = PerTokenLinear(n_tokens, self.chunk, d_model)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        e = self.embed(batch).to(self.proj.bias.dtype)  # (B, F)
        e = F.pad(e, (0, self.n_tokens * self.chunk - e.shape[-1]))
        return self.proj(e.view(-1, self.n_tokens, self.chunk))  # (B, T, D)

    def flops(self) -> int:
        return 2 * self.n_tokens * self.chunk * self.proj.d_out
