"""Per-token linear maps: each token position has its own weight matrix.

These are the products UG-Sep splits (user positions once per user, group positions once
per candidate) and the ones quantization targets, so they take a ``positions`` slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# baddbmm reads the broadcast bias as a full (B, d_out) input; addmm adds it in the GEMM epilogue
ADDMM_MIN_ROWS = 4096


class PerTokenLinear(nn.Module):
    """y[:, t] = x[:, t] @ W[t] + b[t] for T positions at once, as one batched product."""

    def __init__(self, n_tokens: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_out = d_out
        self.weight = nn.Parameter(torch.randn(n_tokens, d_in, d_out) / d_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_tokens, d_out))

    def forward(self, x: Tensor, positions: slice = slice(None)) -> Tensor:
        # x: (B, T', d_in) -> (T', B, d_in) so each position's product is one matrix product
        return self.positions_first(x.transpose(0, 1), positions).transpose(0, 1)

    def positions_first(self, x: Tensor, positions: slice = slice(None)) -> Tensor:
        """The same map in position-major layout: (T', B, d_in) -> (T', B, d_out)."""
        return per_token_product(x, self.weight[positions], self.bias[positions])


def per_token_product(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """(T', B, K) @ (T', K, N) + (T', N) -> (T', B, N) in the fastest exact form for the shape."""
    if x.is_cuda and x.shape[1] >= ADDMM_MIN_ROWS and not torch.is_grad_enabled():
        return per_position_addmm(x, w, b)
    return torch.baddbmm(b.unsqueeze(1), x, w)


def per_position_addmm(x: Tensor, w: Tensor, b: Tensor, out: Tensor | None = None, gelu: bool = False) -> Tensor:
    """(T', B, K) @ (T', K, N) + (T', N) -> (T', B, N): one addmm per position, written in place
    (into ``out`` where given). ``gelu``: GELU in the product's epilogue (cuBLASLt's tanh form on CUDA)."""
    y = torch.empty((x.shape[0], x.shape[1], w.shape[2]), device=x.device, dtype=x.dtype) if out is None else out
    for t in range(x.shape[0]):
        if gelu:
            torch._addmm_activation(b[t], x[t], w[t], use_gelu=True, out=y[t])
        else:
            torch.addmm(b[t], x[t], w[t], out=y[t])
    return y


class PerTokenFFN(nn.Module):
    """RankMixer's per-token FFN: token t has its own W1_t (D x kD) and W2_t (kD x D)."""

    def __init__(self, n_tokens: int, d_model: int, mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = PerTokenLinear(n_tokens, d_model, mult * d_model)
        self.fc2 = PerTokenLinear(n_tokens, mult * d_model, d_model)
        self.dropout = dropout  # on the hidden activations, training only

    def forward(self, x: Tensor, positions: slice = slice(None)) -> Tensor:
        # x: (B, T', D). Both products and the GELU run position-major, (T', B, kD) contiguous:
        # a GELU over a transposed view and a copy back for fc2 cost the CPU more than the products
        # (the products are called as modules, so forward hooks, e.g. FP8 calibration's, see them)
        if self._one_position_at_a_time(x):
            return self._by_position(x.transpose(0, 1), positions).transpose(0, 1)
        h = F.gelu(self.fc1(x, positions).transpose(0, 1))  # (T', B, kD), the product's own layout
        h = F.dropout(h, self.dropout, self.training)
        return self.fc2(h.transpose(0, 1), positions)  # (B, T', D)

    def _one_position_at_a_time(self, x: Tensor) -> bool:
        """CPU inference in bf16/fp16 (``ugsep serve --dtype bfloat16``): each position's (B, kD)
        hidden activations are still in cache for its GELU and fc2, where the batched form writes
        and rereads all T' of them; 1.3-1.6x faster per FFN at B=500, D=128 (no gain in float32).
        Quantized layers keep their own kernels; hooked layers are called as modules."""
        plain = all(type(m) is PerTokenLinear and not m._forward_pre_hooks and not m._forward_hooks
                    for m in (self.fc1, self.fc2))
        half = x.dtype in (torch.bfloat16, torch.float16)
        return x.device.type == "cpu" and half and not torch.is_grad_enabled() and plain

    def _by_position(self, x: Tensor, positions: slice) -> Tensor:
        """(T', B, D) -> (T', B, D), one position's fc1 -> GELU -> fc2 at a time."""
        w1, b1 = self.fc1.weight[positions], self.fc1.bias[positions]
        w2, b2 = self.fc2.weight[positions], self.fc2.bias[positions]
        out = x.new_empty((x.shape[0], x.shape[1], w2.shape[2]))
        for t in range(x.shape[0]):
            torch.addmm(b2[t], F.gelu(torch.addmm(b1[t], x[t], w1[t])), w2[t], out=out[t])
        return out

    def flops_per_token(self) -> int:
        hidden, d = self.fc1.bias.shape[1], self.fc2.bias.shape[1]  # biases survive quantization
        return 4 * d * hidden
