"""Symmetric int8 weight quantization with per-output-channel (or per-group) scales."""

from __future__ import annotations

import torch
from torch import Tensor


def quantize_int8(w: Tensor, group_size: int = 0) -> tuple[Tensor, Tensor]:
    """w: (T, K, N) -> q int8 (T, K, N), scale float32 (T, G, N) with G = K / group_size (1 if 0)."""
    t, k, n = w.shape
    g = group_size or k
    if k % g:
        raise ValueError(f"group_size {g} does not divide the input width {k}")
    wg = w.float().reshape(t, k // g, g, n)
    scale = wg.abs().amax(dim=2).clamp(min=1e-12) / 127.0  # (T, G, N)
    q = torch.round(wg / scale.unsqueeze(2)).clamp(-127, 127).to(torch.int8)
    return q.reshape(t, k, n), scale


def dequantize_int8(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    t, k, n = q.shape
    groups = scale.shape[1]
    w = q.to(dtype).reshape(t, groups, k // groups, n) * scale.to(dtype).unsqueeze(2)
    return w.reshape(t, k, n)
