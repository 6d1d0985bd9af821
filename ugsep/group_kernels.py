"""Triton kernels for the item side of score_groups in position-major layout (T_g, N, D).

``mix_norm`` does one layer's token mixing for the group positions, reading the user heads of
each candidate's user straight from the per-user state (no per-candidate gather or concat),
adds the compensation term and the residual, applies LayerNorm and, for an FP8 layer next,
quantizes the normalized rows as well. ``add_norm`` is the FFN's residual add + LayerNorm.
Each reads its input once and writes its output once. Imported only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from ugsep.quant.fp8 import E4M3_MAX
from ugsep.quant.triton_kernels import fp8_row_scales, fp8_rows


def _rows_per_program(width: int) -> int:
    return max(1, 8192 // triton.next_power_of_2(width))


@triton.jit
def _layer_norm_rows(x, mask, cols, D, w_ptr, b_ptr, eps):
    """LayerNorm of fp32 rows x (ROWS, BD); masked columns are zero in x and in the result."""
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / D + eps)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    return xc * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _mix_norm_kernel(
    g_ptr, h_ptr, idx_ptr, c_ptr, w_ptr, b_ptr, s_ptr, q_ptr, qs_ptr,
    N, D, eps, shb, sht, shg, scb, scg, sqs,
    TU: tl.constexpr, HD: tl.constexpr, HAS_COMP: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr,
    ROWS: tl.constexpr, BD: tl.constexpr,
):
    h = tl.program_id(1)  # group output position
    n = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # candidates
    cols = tl.arange(0, BD)
    src, j = cols // HD, cols % HD  # output slot = (source token, offset in its head)
    mask = (n[:, None] < N) & (cols[None, :] < D)
    from_user = (src < TU)[None, :]
    u = tl.load(idx_ptr + n, mask=n < N, other=0).to(tl.int64)
    n64 = n.to(tl.int64)
    # slots from user tokens: head h of user token src, precomputed per user
    m = tl.load(h_ptr + u[:, None] * shb + src[None, :] * sht + h * shg + j[None, :],
                mask=mask & from_user, other=0.0).to(tl.float32)
    # slots from group tokens: head (TU + h) of this candidate's group token src - TU
    own = (src[None, :] - TU).to(tl.int64) * N * D + n64[:, None] * D + (TU + h) * HD + j[None, :]
    m += tl.load(g_ptr + own, mask=mask & ~from_user, other=0.0).to(tl.float32)
    if HAS_COMP:
        m += tl.load(c_ptr + u[:, None] * scb + h * scg + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    row = h.to(tl.int64) * N * D + n64[:, None] * D + cols[None, :]
    x = m + tl.load(g_ptr + row, mask=mask, other=0.0).to(tl.float32)
    s = _layer_norm_rows(x, mask, cols, D, w_ptr, b_ptr, eps).to(s_ptr.dtype.element_ty)
    tl.store(s_ptr + row, s, mask=mask)
    if FP8:  # the rows the FP8 product will read, quantized from the stored (rounded) values
        q, scale = fp8_rows(s.to(tl.float32), FP8_MAX)
        tl.store(q_ptr + row, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(qs_ptr + h * sqs + n64, scale, mask=n < N)


def mix_norm(g: Tensor, heads: Tensor, user_index: Tensor, comp: Tensor | None, norm: nn.LayerNorm,
             n_user: int, fp8: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """s = LayerNorm(Mix(user heads, g) + comp + g) for the group positions.

    g: (T_g, N, D) contiguous; heads: (B_u, T_u, T_g, d) with unit last stride (one layer of
    the state); user_index: (N,); comp: (B_u, T_g, D) or None. Returns s (T_g, N, D) and, with
    ``fp8``, s's rows as E4M3 (T_g, N, D) + float32 scales (T_g, N, 1).
    """
    tg, n, d = g.shape
    if not g.is_contiguous() or heads.stride(-1) != 1 or (comp is not None and comp.stride(-1) != 1):
        raise ValueError("mix_norm needs contiguous g and unit last strides in heads and comp")
    s = torch.empty_like(g)
    q = torch.empty(g.shape, device=g.device, dtype=torch.float8_e4m3fn) if fp8 else s
    qs = fp8_row_scales((tg,), n, g.device) if fp8 else s
    c = comp if comp is not None else g
    rows = _rows_per_program(d)
    _mix_norm_kernel[(triton.cdiv(n, rows), tg)](
        g, heads, user_index, c, norm.weight, norm.bias, s, q, qs,
        n, d, norm.eps, heads.stride(0), heads.stride(1), heads.stride(2), c.stride(0), c.stride(1), qs.stride(0),
        TU=n_user, HD=d // (n_user + tg), HAS_COMP=comp is not None, FP8=fp8, FP8_MAX=E4M3_MAX,
        ROWS=rows, BD=triton.next_power_of_2(d), num_warps=8,
    )
    return s, ((q, qs) if fp8 else None)


@triton.jit
def _add_norm_kernel(y_ptr, r_ptr, w_ptr, b_ptr, o_ptr, R, D, eps, ROWS: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BD)
    mask = (rows[:, None] < R) & (cols[None, :] < D)
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32) + \
        tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = _layer_norm_rows(x, mask, cols, D, w_ptr, b_ptr, eps)
    tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=mask)


def add_norm(y: Tensor, residual: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm(y + residual) over the last dim; both contiguous and of one shape."""
    if not (y.is_contiguous() and residual.is_contiguous()) or y.shape != residual.shape:
        raise ValueError("add_norm needs contiguous tensors of one shape")
    out = torch.empty_like(residual)
    d = y.shape[-1]
    r = y.numel() // d
    rows = _rows_per_program(d)
    _add_norm_kernel[(triton.cdiv(r, rows),)](y, residual, norm.weight, norm.bias, out, r, d, norm.eps,
                                              ROWS=rows, BD=triton.next_power_of_2(d), num_warps=8)
    return out
