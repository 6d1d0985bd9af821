"""Triton kernels for the item side of score_groups in position-major layout (T_g, N, D).

``mix_norm`` does one layer's token mixing for the group positions, reading the user heads of
each candidate's user straight from the per-user state (no per-candidate gather or concat),
adds the compensation term and the residual, applies LayerNorm and, for an FP8 layer next,
quantizes the normalized rows as well. ``add_norm`` is a residual add + LayerNorm (the FFN's, and
the query decoder's), ``add_norm_pool`` the last one summed over positions for the head.
``add_user_gelu`` finishes the candidate queries' first linear (user part + GELU) and
``merge_null_slot`` folds the query decoder's learned null slot into a flash attention result.
Each reads its input once and writes its output once. Imported only on CUDA.
"""

from __future__ import annotations

import math

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


def add_norm(y: Tensor, residual: Tensor, norm: nn.LayerNorm, out: Tensor | None = None) -> Tensor:
    """LayerNorm(y + residual) over the last dim; all contiguous and of one shape. ``out`` may be
    ``residual`` itself (each row is read before it is written)."""
    if not (y.is_contiguous() and residual.is_contiguous()) or y.shape != residual.shape or \
            (out is not None and (not out.is_contiguous() or out.shape != y.shape)):
        raise ValueError("add_norm needs contiguous tensors of one shape")
    out = torch.empty_like(residual) if out is None else out
    d = y.shape[-1]
    r = y.numel() // d
    rows = _rows_per_program(d)
    _add_norm_kernel[(triton.cdiv(r, rows),)](y, residual, norm.weight, norm.bias, out, r, d, norm.eps,
                                              ROWS=rows, BD=triton.next_power_of_2(d), num_warps=8)
    return out


@triton.jit
def _add_norm_pool_kernel(y_ptr, r_ptr, w_ptr, b_ptr, o_ptr, P, N, D, eps, scale,
                          ROWS: tl.constexpr, BD: tl.constexpr):
    n = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # candidates
    cols = tl.arange(0, BD)
    mask = (n[:, None] < N) & (cols[None, :] < D)
    offs = n[:, None].to(tl.int64) * D + cols[None, :]
    acc = tl.zeros((ROWS, BD), dtype=tl.float32)
    position = tl.cast(N, tl.int64) * D  # elements per position: 64-bit, past 2**31 at large N
    for p in range(P):
        at = p * position + offs
        x = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32) + \
            tl.load(r_ptr + at, mask=mask, other=0.0).to(tl.float32)
        acc += _layer_norm_rows(x, mask, cols, D, w_ptr, b_ptr, eps)
    tl.store(o_ptr + offs, (acc * scale).to(o_ptr.dtype.element_ty), mask=mask)


def add_norm_pool(y: Tensor, residual: Tensor, norm: nn.LayerNorm, scale: float) -> Tensor:
    """scale * sum over positions of LayerNorm(y + residual): (P, N, D) -> (N, D), the last layer's
    output reduced for the head without writing the (P, N, D) tokens."""
    if not (y.is_contiguous() and residual.is_contiguous()) or y.shape != residual.shape or y.dim() != 3:
        raise ValueError("add_norm_pool needs contiguous (P, N, D) tensors of one shape")
    p, n, d = y.shape
    out = torch.empty((n, d), device=y.device, dtype=residual.dtype)
    rows = _rows_per_program(d)
    _add_norm_pool_kernel[(triton.cdiv(n, rows),)](y, residual, norm.weight, norm.bias, out, p, n, d, norm.eps,
                                                   scale, ROWS=rows, BD=triton.next_power_of_2(d), num_warps=8)
    return out


@triton.jit
def _gelu_erf(x):
    """Exact (erf) GELU, as F.gelu computes it."""
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _add_user_gelu_kernel(h_ptr, pre_ptr, idx_ptr, o_ptr, N, D, NQ, spb, spq,
                          ROWS: tl.constexpr, BD: tl.constexpr):
    q = tl.program_id(1)  # query position
    n = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BD)
    mask = (n[:, None] < N) & (cols[None, :] < D)
    u = tl.load(idx_ptr + n, mask=n < N, other=0).to(tl.int64)
    n64 = n.to(tl.int64)
    x = tl.load(h_ptr + n64[:, None] * (NQ * D) + q * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(pre_ptr + u[:, None] * spb + q * spq + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + q.to(tl.int64) * N * D + n64[:, None] * D + cols[None, :], _gelu_erf(x).to(o_ptr.dtype.element_ty),
             mask=mask)


def add_user_gelu(h: Tensor, pre: Tensor, user_index: Tensor) -> Tensor:
    """GELU(h + pre[user_index]) with the query position moved first: h (N, N_q * D) contiguous (the
    candidate part of the queries' first linear), pre (B_u, N_q, D) (the user part, unit last stride)
    -> (N_q, N, D)."""
    n = h.shape[0]
    _, nq, d = pre.shape
    if not h.is_contiguous() or h.shape[1] != nq * d or pre.stride(-1) != 1:
        raise ValueError("add_user_gelu needs h (N, N_q * D) contiguous and pre (B_u, N_q, D) with unit last stride")
    out = torch.empty((nq, n, d), device=h.device, dtype=h.dtype)
    rows = _rows_per_program(d)
    _add_user_gelu_kernel[(triton.cdiv(n, rows), nq)](h, pre, user_index, out, n, d, nq, pre.stride(0),
                                                      pre.stride(1), ROWS=rows, BD=triton.next_power_of_2(d),
                                                      num_warps=8)
    return out


@triton.jit
def _merge_null_kernel(o_ptr, lse_ptr, q_ptr, nk_ptr, nv_ptr, idx_ptr, lens_ptr, y_ptr,
                       R, N, NQ, H, HD, slse, sm_scale,
                       BY_POSITION: tl.constexpr, ROWS: tl.constexpr, BH: tl.constexpr, BHD: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # query rows in the attention call's order
    h = tl.arange(0, BH)
    j = tl.arange(0, BHD)
    col = h[:, None] * HD + j[None, :]  # (BH, BHD): column of (head, offset)
    cmask = (h[:, None] < H) & (j[None, :] < HD)
    rmask = r < R
    m3 = rmask[:, None, None] & cmask[None, :, :]
    d = H * HD
    offs = r.to(tl.int64)[:, None, None] * d + col[None, :, :]
    q = tl.load(q_ptr + offs, mask=m3, other=0.0).to(tl.float32)
    nk = tl.load(nk_ptr + col, mask=cmask, other=0.0).to(tl.float32)
    s_null = tl.sum(q * nk[None, :, :], axis=2) * sm_scale  # (ROWS, BH): the null slot's score
    if BY_POSITION:
        n, p = r % N, r // N
    else:
        n, p = r // NQ, r % NQ
    u = tl.load(idx_ptr + n, mask=rmask, other=0)
    has = tl.load(lens_ptr + u, mask=rmask, other=0) > 0
    lse = tl.load(lse_ptr + h[None, :] * slse + r[:, None], mask=rmask[:, None] & (h[None, :] < H),
                  other=-float("inf"))
    lse = tl.where(has[:, None], lse, -float("inf"))  # no events: the kernel's row is a placeholder
    top = tl.maximum(lse, s_null)
    w_ev, w_null = tl.exp(lse - top), tl.exp(s_null - top)
    total = w_ev + w_null
    o = tl.load(o_ptr + offs, mask=m3, other=0.0).to(tl.float32)
    nv = tl.load(nv_ptr + col, mask=cmask, other=0.0).to(tl.float32)
    y = o * (w_ev / total)[:, :, None] + nv[None, :, :] * (w_null / total)[:, :, None]
    dst = (p.to(tl.int64) * N + n)[:, None, None] * d + col[None, :, :]
    tl.store(y_ptr + dst, y.to(y_ptr.dtype.element_ty), mask=m3)


def merge_null_slot(out: Tensor, lse: Tensor, q: Tensor, null_kv: Tensor, user_index: Tensor, used_k: Tensor,
                    n_queries: int, by_position: bool) -> Tensor:
    """softmax over [events, null slot] from the attention over the events alone: out (R, H, d) and its
    log-sum-exp (H, >= R) float32, the queries q (R, H, d), null_kv (2, H * d); rows in the attention
    call's order (by_position: row p * N + n, else n * N_q + p). Returns (N_q * N, H * d), position-major.
    user_index (N,): each candidate's user; used_k (B_u,): events per user (0: the null slot alone)."""
    r, heads, hd = out.shape
    if not (out.is_contiguous() and q.is_contiguous() and lse.stride(-1) == 1):
        raise ValueError("merge_null_slot needs contiguous out and q, and lse with unit last stride")
    n = user_index.numel()
    y = torch.empty((r, heads * hd), device=out.device, dtype=q.dtype)
    bh, bhd = triton.next_power_of_2(heads), triton.next_power_of_2(hd)
    rows = max(1, 4096 // (bh * bhd))
    nkv = null_kv.contiguous()
    _merge_null_kernel[(triton.cdiv(r, rows),)](
        out, lse, q, nkv[0], nkv[1], user_index, used_k, y, r, n, n_queries, heads, hd, lse.stride(0),
        1.0 / math.sqrt(hd), BY_POSITION=by_position, ROWS=rows, BH=bh, BHD=bhd, num_warps=4)
    return y
