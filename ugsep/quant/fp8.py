"""FP8 (E4M3) with per-output-channel weight scales and per-row dynamic activation scales."""

from __future__ import annotations

import torch
from torch import Tensor

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def quantize_fp8_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """w: (T, K, N) -> fp8 (T, K, N), scale float32 (T, N)."""
    scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / E4M3_MAX
    return (w.float() / scale.unsqueeze(1)).to(E4M3), scale


def quantize_fp8_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x: (..., M, K) -> fp8 rows and float32 scales (..., M, 1), one scale per row (token)."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


def fp8_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
