"""CollectiveKV (arXiv 2601.19178): most of what a sequence's keys and values carry is shared
across users, so a learnable pool holds it and each user keeps only pool indices and a few
user-specific dimensions.

For one layer's sequence representation H (B, L, D), separately for K and for V:
    idx    = argmax_j (norm(H) W_r)_j              top-1 routing over ``pool_size`` pool rows
    K      = [gate * P_K[idx] ; SiLU(H W_u)]       (B, L, D - d_user) shared ; (B, L, d_user) user
    gate   = sigmoid(top-1 logit)                  training only: the peak loss drives it to 1,
                                                   so inference uses P_K[idx] as is
Training adds (``aux_loss``, weighted by the trainer):
    peak loss     -mean log gate                   over the valid positions
    balance loss  KL(mean routing distribution || uniform), over the valid positions

norm(H) standardizes each feature over the sequence positions (batch statistics in training,
running ones at inference, as batch norm does). A sequence representation shares a large
component across all positions (biases, normalization), so an unnormalized router ranks the
pool rows almost the same way for every event: at initialization a handful of rows serve
every position, and neither loss breaks that (the peak loss only raises the winner's logit;
the balance loss sees the mean softmax, not the winners). Centred, the router sends different
events to different rows from the first step.

What a user's state keeps per layer and position: the two indices and the two user parts
(``compress``); ``expand`` rebuilds K and V from them and the pool, on the device, where
candidates read them. In eval mode the full forward and the split path both drop the gate, so
they compute the same K and V.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CollectiveKV(nn.Module):
    """Routers, pools and user projections for K and V of one layer."""

    def __init__(self, d_model: int, pool_size: int, user_dim: int) -> None:
        super().__init__()
        if not 0 < user_dim < d_model:
            raise ValueError(f"kv_user_dim={user_dim} must be between 1 and d_model - 1 = {d_model - 1}")
        self.pool_size, self.user_dim = pool_size, user_dim
        self.router = nn.Linear(d_model, 2 * pool_size)  # W_r for K, then for V
        self.user = nn.Linear(d_model, 2 * user_dim)  # W_u for K, then for V
        self.pool = nn.Parameter(torch.randn(2, pool_size, d_model - user_dim) / math.sqrt(d_model))  # P_K, P_V
        self.register_buffer("route_mean", torch.zeros(d_model))  # norm(H)'s running statistics
        self.register_buffer("route_var", torch.ones(d_model))
        self.aux_loss: Tensor | None = None  # set by ``compress`` in training mode, read by the trainer

    def compress(self, h: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """h (B, L, D), valid (B, L) -> (idx (B, 2, L) int64, user parts (B, 2, L, d_user), gate
        (B, 2, L) in training, else None). Training also sets ``aux_loss``."""
        routed = self.router(self._route_norm(h, valid))  # (B, L, 2P)
        logits = routed.unflatten(-1, (2, self.pool_size)).transpose(1, 2)  # (B, 2, L, P)
        top, idx = logits.max(-1)
        user = F.silu(self.user(h)).unflatten(-1, (2, self.user_dim)).transpose(1, 2)  # (B, 2, L, d_user)
        if not self.training:
            return idx, user, None
        gate = torch.sigmoid(top)
        self.aux_loss = self._losses(logits, gate, valid)
        return idx, user, gate

    def _route_norm(self, h: Tensor, valid: Tensor) -> Tensor:
        """norm(H): (B, L, D) standardized per feature over the valid positions (training: this
        batch's, folded into the running statistics with momentum 0.1; inference, or a training
        batch with fewer than two events: the running ones)."""
        mean, var = self.route_mean, self.route_var
        if self.training:
            hf, w = h.float(), valid.unsqueeze(-1).float()  # (B, L, D), (B, L, 1)
            n = w.sum()
            b_mean = (hf * w).sum((0, 1)) / n.clamp(min=1.0)
            b_var = (((hf - b_mean) ** 2) * w).sum((0, 1)) / n.clamp(min=1.0)
            enough = n > 1  # a tensor test, no host sync
            mean, var = torch.where(enough, b_mean, mean.float()), torch.where(enough, b_var, var.float())
            with torch.no_grad():
                step = 0.1 * enough.to(self.route_mean.dtype)
                self.route_mean.lerp_(mean.detach().to(self.route_mean.dtype), step)
                self.route_var.lerp_(var.detach().to(self.route_var.dtype), step)
        return ((h - mean) * torch.rsqrt(var + 1e-5)).to(h.dtype)

    def _losses(self, logits: Tensor, gate: Tensor, valid: Tensor) -> Tensor:
        """peak + balance over the valid positions (0 when the batch has none)."""
        w = valid.unsqueeze(1).to(logits.dtype)  # (B, 1, L)
        n = w.sum().clamp(min=1.0) * 2
        peak = -(torch.log(gate.clamp(min=1e-6)) * w).sum() / n
        mean_p = (torch.softmax(logits.float(), -1) * w.unsqueeze(-1)).sum((0, 2)) / (n / 2)  # (2, P)
        balance = (mean_p * torch.log(mean_p.clamp(min=1e-12) * self.pool_size)).sum(-1).mean()
        return peak + balance

    def expand(self, idx: Tensor, user: Tensor, gate: Tensor | None = None) -> Tensor:
        """(B, 2, L) indices, (B, 2, L, d_user) user parts [, gate (B, 2, L)] -> K/V (B, 2, L, D),
        K and V each a (B, L, D) slab in memory (as varlen decoding reads them)."""
        shared = torch.stack([self.pool[0][idx[:, 0]], self.pool[1][idx[:, 1]]])  # (2, B, L, D - d_user)
        if gate is not None:
            shared = shared * gate.transpose(0, 1).unsqueeze(-1)
        return torch.cat([shared.to(user.dtype), user.transpose(0, 1)], dim=-1).transpose(0, 1)

    def flops_per_event(self) -> int:
        """Matmul FLOPs of routing and the user projections per sequence position."""
        return 2 * (self.router.weight.numel() + self.user.weight.numel())


def pool_counts(kv_index: Tensor, valid: Tensor, pool_size: int) -> Tensor:
    """How many valid sequence positions each pool row serves: kv_index (B, L, 2, S) of a user
    state (L layers; K then V), valid (B, S) -> (L, 2, pool_size) int64."""
    n_layers = kv_index.shape[1]
    idx = kv_index.permute(1, 2, 0, 3)[:, :, valid > 0.5]  # (L, 2, valid positions)
    offset = torch.arange(n_layers * 2, device=idx.device).view(n_layers, 2, 1) * pool_size
    counts = torch.bincount((idx + offset).flatten(), minlength=n_layers * 2 * pool_size)
    return counts.view(n_layers, 2, pool_size)


def pool_usage(counts: Tensor, top: int = 10) -> dict[str, list[list[float]]]:
    """Routing health from ``pool_counts``, per layer as [K, V]: the share of the pool's rows some
    position uses (a collapsed router uses few), and the share of positions the ``top`` busiest
    rows take."""
    total = counts.sum(-1).clamp(min=1)
    used = (counts > 0).float().mean(-1)
    busiest = counts.topk(min(top, counts.shape[-1]), dim=-1).values.sum(-1) / total
    return {"rows_used": used.tolist(), f"top{top}_share": busiest.float().tolist()}


class PoolTally:
    """An ``on_state`` callback for ``ugsep.train.evaluate``: sums ``pool_counts`` over the user
    states of an evaluation; ``usage()`` is then ``pool_usage`` of the sum, rounded (None before any)."""

    def __init__(self, pool_size: int) -> None:
        self.pool_size, self.counts = pool_size, None

    def __call__(self, state) -> None:
        c = pool_counts(state.kv_index, state.valid, self.pool_size).cpu()
        self.counts = c if self.counts is None else self.counts + c

    def usage(self) -> dict[str, list[list[float]]] | None:
        if self.counts is None:
            return None
        return {k: [[round(x, 4) for x in kv] for kv in v] for k, v in pool_usage(self.counts).items()}
