"""The scoring head, shared by the full forward, the split path and the fused item side."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Head(nn.Sequential):
    """Pool the final tokens, then Linear -> GELU -> Linear to one logit per candidate.

    ``pool="group"`` averages the T_g group tokens; ``pool="all"`` averages all T tokens, read
    as the group tokens' sum plus the user tokens' sum (``user_sum``), which the split path
    precomputes once per user. A Sequential so the weights keep their names (head.0, head.2).
    """

    def __init__(self, d_model: int, hidden: int, pool: str, n_tokens: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.pool, self.n_tokens, self.dropout = pool, n_tokens, dropout

    def user_sum(self, user_tokens: Tensor) -> Tensor | None:
        """What the head needs from the final user tokens (B, T_u, D): their sum (B, D) under
        pool="all", nothing under pool="group"."""
        return user_tokens.sum(1) if self.pool == "all" else None

    def forward(self, group_tokens: Tensor, user_sum: Tensor | None = None, token_dim: int = 1) -> Tensor:
        """group_tokens: (N, T_g, D), or (T_g, N, D) with ``token_dim=0``; user_sum: (N, D) -> logits (N,)."""
        if self.pool == "group":
            pooled = group_tokens.mean(token_dim)  # (N, D)
        else:
            pooled = (group_tokens.sum(token_dim) + user_sum) / self.n_tokens  # (N, D)
        hidden = F.dropout(self[1](self[0](pooled)), self.dropout, self.training)  # dropout: training only
        return self[2](hidden).squeeze(-1)

    def flops(self) -> int:
        """Matmul FLOPs per candidate."""
        return 2 * sum(m.weight.numel() for m in self if isinstance(m, nn.Linear))
