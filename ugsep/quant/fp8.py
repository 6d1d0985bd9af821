"""FP8 (E4M3) with per-output-channel weight scales and per-row dynamic activation scales."""

from __future__ import annotations

import torch
from torch import Tensor

from ugsep.quant.optional_triton import triton_kernel

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


def fp8_bmm(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """y[t] = x[t] @ q[t]^T * scale[t] + bias[t] with per-row dynamic FP8 activations.

    x: (T, M, K) 16-bit; q: (T, N, K) E4M3 (column-major B); scale: (T, N) float32; bias: (T, N).
    On FP8 GPUs: one cuBLASLt rowwise-scaled GEMM per position, written in place (no stack copy);
    elsewhere an emulation with the same rounding.
    """
    x = x.contiguous()
    if not (x.is_cuda and fp8_supported(x.device)):
        xq, xs = quantize_fp8_rows(x)
        wf = q.float().transpose(1, 2) * scale.unsqueeze(1)
        return torch.baddbmm(bias.float().unsqueeze(1), xq.float() * xs, wf).to(x.dtype)
    xq, xs = (triton_kernel("fp8_quantize_rows") or quantize_fp8_rows)(x)  # (T, M, K), (T, M, 1)
    y = torch.empty((x.shape[0], x.shape[1], q.shape[1]), device=x.device, dtype=torch.bfloat16)
    for t in range(x.shape[0]):
        # each position's row scales get their own (16-byte aligned) allocation, as cuBLASLt needs;
        # fast accumulation: K is at most a few thousand here, and the scores test bounds the error
        torch._scaled_mm(xq[t], q[t].t(), scale_a=xs[t].clone(), scale_b=scale[t].unsqueeze(0),
                         bias=bias[t].to(torch.bfloat16), out_dtype=torch.bfloat16, use_fast_accum=True, out=y[t])
    return y.to(x.dtype)
