"""FP8 (E4M3) with per-output-channel weight scales and per-row dynamic activation scales."""

from __future__ import annotations

import torch
from torch import Tensor

from ugsep.kernels import triton_kernel

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


def fp8_bmm(x: Tensor | None, q: Tensor, scale: Tensor, bias: Tensor,
            x_fp8: tuple[Tensor, Tensor] | None = None, triton_rows: bool = False) -> Tensor:
    """y[t] = x[t] @ q[t]^T * scale[t] + bias[t] with per-row dynamic FP8 activations.

    x: (T, M, K) 16-bit; q: (T, N, K) E4M3 (column-major B); scale: (T, N) float32; bias: (T, N).
    ``x_fp8``: x's rows already quantized, ((T, M, K) E4M3, (T, M, 1) float32), e.g. by a kernel
    that fused it with what produced x; x may then be None and y is bf16. ``triton_rows``: on
    FP8 GPUs quantize x's rows with the Triton kernel (the caller's kernel choice).
    On FP8 GPUs: one cuBLASLt rowwise-scaled GEMM per position, written in place (no stack copy);
    elsewhere an emulation with the same rounding.
    """
    out_dtype = torch.bfloat16 if x is None else x.dtype
    if not fp8_supported(q.device):
        xq, xs = x_fp8 or quantize_fp8_rows(x)
        wf = q.float().transpose(1, 2) * scale.unsqueeze(1)
        return torch.baddbmm(bias.float().unsqueeze(1), xq.float() * xs, wf).to(out_dtype)
    quantize_rows = triton_kernel("fp8_quantize_rows") if triton_rows else quantize_fp8_rows
    xq, xs = x_fp8 or quantize_rows(x.contiguous())  # (T, M, K), (T, M, 1)
    y = torch.empty((xq.shape[0], xq.shape[1], q.shape[1]), device=q.device, dtype=torch.bfloat16)
    for t in range(xq.shape[0]):
        # cuBLASLt wants 16-byte aligned scales; fast accumulation: K is short and a test bounds the error
        xs_t = xs[t] if xs[t].data_ptr() % 16 == 0 else xs[t].clone()
        torch._scaled_mm(xq[t], q[t].t(), scale_a=xs_t, scale_b=scale[t].unsqueeze(0),
                         bias=bias[t].to(torch.bfloat16), out_dtype=torch.bfloat16, use_fast_accum=True, out=y[t])
    return y.to(out_dtype)
