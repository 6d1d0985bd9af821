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
    """Turns a dict of raw field tensors into one (B, F) float tensor.

    The per-field plan (name, kind, buckets) is fixed in ``__init__`` as a tuple of plain
    values, and the dense transform has no data-dependent branch, so ``torch.compile`` traces
    ``forward`` as one graph with no recompiles.
    """

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
        self.plan = tuple((f.name, f.kind, f.buckets) for f in fields)  # in output column order
        self.dense_names = tuple(f.name for f in fields if f.kind == FieldKind.DENSE)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if self.dense_policy == DensePolicy.REJECT and self.dense_names:
            reject_non_finite(batch, self.dense_names)
        parts = []
        for name, kind, buckets in self.plan:
            x = _get(batch, name)
            if kind == FieldKind.DENSE:
                parts.append(_dense(x).unsqueeze(-1))
            else:
                parts.append(embed_ids(self.tables[name], kind, buckets, x))
        return torch.cat(parts, dim=-1)


def embed_ids(table: nn.Embedding, kind: FieldKind, buckets: int, x: Tensor) -> Tensor:
    """A categorical (B,) or multi (B, L) field's ids -> (B, dim): hashed into ``buckets`` by
    modulo; a multi field's embeddings mean-pooled over its valid entries."""
    if kind == FieldKind.CATEGORICAL:
        return table(torch.remainder(x.long(), buckets))
    return _mean_pool(table, x.long(), buckets)


def _mean_pool(table: nn.Embedding, ids: Tensor, buckets: int) -> Tensor:
    """ids: (B, L) padded with PAD_ID -> (B, dim), the mean over the valid entries (0 if none)."""
    valid = ids != PAD_ID
    emb = table(torch.where(valid, torch.remainder(ids, buckets), 0))
    emb = emb * valid.unsqueeze(-1)  # (B, L, dim)
    return emb.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)


def _get(batch: dict[str, Tensor], name: str) -> Tensor:
    try:
        return batch[name]
    except KeyError:
        raise KeyError(f"batch is missing field {name!r} (has {sorted(batch)})") from None


def _dense(x: Tensor) -> Tensor:
    """NaN -> 0, +-inf -> +-DENSE_CLIP, clamp, then a signed log1p so counts and prices share a
    scale. No branch on the data: finite values pass nan_to_num unchanged."""
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=DENSE_CLIP, neginf=-DENSE_CLIP)
    x = x.clamp(-DENSE_CLIP, DENSE_CLIP)
    return torch.sign(x) * torch.log1p(x.abs())


def reject_non_finite(batch: dict[str, Tensor], names: tuple[str, ...]) -> None:
    """DensePolicy.REJECT: raise, naming the first dense field with NaN/inf and the count. It
    reads a flag back to the host: under torch.compile this is a graph break (CLAMP has none)."""
    bad = ~torch.isfinite(torch.stack([_get(batch, n).float() for n in names], dim=-1))  # (B, n_dense)
    if bool(bad.any()):
        name, count = next((n, c) for n, c in zip(names, bad.sum(0).tolist(), strict=True) if c)
        raise ValueError(f"dense field {name!r} has {count} NaN/inf values")


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
