"""Triton kernel for W8A16 batched per-token products: y[t] = x[t] @ dequant(q[t]) + b[t].

One program computes a (BM x BN) tile of one token position: int8 weights are loaded
(half the bytes of bf16), turned into bf16 in registers and fed to tensor-core dots; the
per-channel scale, the bias and an optional GELU are applied once on the accumulator.
From 17 rows on, on Hopper, with the weights stored (T, N, K) as the model keeps them, the
tiles come through TMA (``_w8a16_tma_kernel``). Imported only on CUDA; CPU installs need no Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from ugsep.quant.fp8 import E4M3_MAX


def _configs():
    return [
        triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (16, 64, 128, 2, 3), (16, 64, 128, 4, 3), (16, 64, 256, 2, 2), (16, 32, 256, 4, 3), (16, 128, 128, 4, 4),
            (32, 64, 128, 4, 4), (64, 128, 64, 4, 3), (64, 64, 64, 4, 4), (128, 128, 64, 8, 3),
        ]
    ]


# Few output tiles (long K, narrow N) leave SMs idle: split K, add fp32 partials atomically
SPLIT_K_MAX_TILES = 256


def _bench_replays(fn, quantiles):
    """Autotune on CUDA graph replays (eager timings of these short kernels are mostly launch
    cost), each call after reading a buffer twice the L2 size: in a model a layer's weights are
    evicted by the next layers' before they are read again, and the fastest tile config for
    L2-resident weights is not the fastest from HBM. The read costs every config the same.
    Triton times on a fresh stream that does not wait for the caller's, so wait for pending work
    (the inputs) first."""
    torch.cuda.synchronize()
    evict = torch.empty(2 * torch.cuda.get_device_properties().L2_cache_size // 4, dtype=torch.float32,
                        device="cuda")

    def from_hbm():
        evict.amax()  # a read leaves clean lines: no write-backs inside the timed kernel
        fn()

    return triton.testing.do_bench_cudagraph(from_hbm, rep=20, quantiles=quantiles)


@triton.jit
def _scale_bias(s_ptr, b_ptr, t, ks, rn, N, sst, ssn, sbt, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr):
    """Per-column fp32 scale (1 when grouped: applied to the weights) and bias (split 0 adds it)."""
    sc = tl.full(rn.shape, 1.0, tl.float32)
    bi = tl.zeros(rn.shape, tl.float32)
    if not GROUPED:
        sc = tl.load(s_ptr + t * sst + rn * ssn, mask=rn < N, other=0.0)
    if HAS_BIAS:
        bi = tl.load(b_ptr + t * sbt + rn, mask=(rn < N) & (ks == 0), other=0.0).to(tl.float32)
    return sc, bi


@triton.jit
def _gelu(acc):
    """Exact (erf) GELU, as F.gelu computes it."""
    return 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))


@triton.autotune(configs=_configs(), key=["M", "N", "K", "GROUPED", "SPLIT"],
                 reset_to_zero=["y_ptr"], do_bench=_bench_replays)
@triton.jit
def _w8a16_bmm_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, y_ptr,
    M, N, K, GROUP,
    sxt, sxm, sxk, sqt, sqk, sqn, sst, ssg, ssn, sbt, syt, sym, syn,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, GROUPED: tl.constexpr, SPLIT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid, t, ks = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_tiles = tl.cdiv(N, BN)
    pm, pn = pid // n_tiles, pid % n_tiles
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    x_base = x_ptr + t * sxt + rm[:, None] * sxm
    q_base = q_ptr + t * sqt + rn[None, :] * sqn
    # small-M tiles: load the epilogue's operands first so their latency hides under the weight stream
    if BM <= 16:
        sc, bi = _scale_bias(s_ptr, b_ptr, t, ks, rn, N, sst, ssn, sbt, HAS_BIAS, GROUPED)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k_per = tl.cdiv(tl.cdiv(K, SPLIT), BK) * BK
    for k0 in range(ks * k_per, tl.minimum(K, (ks + 1) * k_per), BK):
        kk = k0 + rk
        x = tl.load(x_base + kk[None, :] * sxk, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        q = tl.load(q_base + kk[:, None] * sqk, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0)
        if GROUPED:
            g = tl.load(s_ptr + t * sst + (kk // GROUP)[:, None] * ssg + rn[None, :] * ssn,
                        mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
            w = (q.to(tl.float32) * g).to(x.dtype)
        else:
            w = q.to(x.dtype)
        acc += tl.dot(x, w)
    if BM > 16:
        sc, bi = _scale_bias(s_ptr, b_ptr, t, ks, rn, N, sst, ssn, sbt, HAS_BIAS, GROUPED)
    acc = acc * sc[None, :] + bi[None, :]
    if GELU:
        acc = _gelu(acc)
    y_ptrs = y_ptr + t * syt + rm[:, None] * sym + rn[None, :] * syn
    if SPLIT > 1:
        tl.atomic_add(y_ptrs, acc, mask=(rm[:, None] < M) & (rn[None, :] < N), sem="relaxed")
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _tma_blocks(nargs):
    """The descriptors' block shapes follow the config being run."""
    nargs["x_desc"].block_shape = [1, nargs["BM"], nargs["BK"]]
    nargs["q_desc"].block_shape = [1, nargs["BN"], nargs["BK"]]


def _tma_configs():
    return [
        triton.Config({"BM": bm, "BN": bn, "BK": bk, "SWAP": swap}, num_warps=w, num_stages=s, pre_hook=_tma_blocks)
        for bm, bn, bk, swap, w, s in [
            (64, 64, 128, True, 4, 4), (64, 128, 64, False, 4, 3), (64, 128, 64, True, 4, 3), (32, 64, 128, True, 4, 4),
            (128, 128, 64, False, 4, 4), (128, 128, 64, False, 8, 3),
        ]
    ]


@triton.autotune(configs=_tma_configs(), key=["M", "N", "K"], do_bench=_bench_replays)
@triton.jit
def _w8a16_tma_kernel(
    x_desc, q_desc, s_ptr, b_ptr, y_ptr,
    M, N, K, sst, ssn, sbt, syt, sym, syn,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, SWAP: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """_w8a16_bmm_kernel for M > 16 with both tiles fetched by TMA: x through a (T, M, K) descriptor,
    the weights through one over their (T, N, K) storage (zero fill past M, N and K, so no masks).
    SWAP computes the transposed tile, dequant(q) (BN x BK, straight from registers as the wgmma A
    operand) @ x^T, so the wide N side fills the 64-row MMA when the N tiles are narrow."""
    pid, t = tl.program_id(0), tl.program_id(1)
    m_tiles = tl.cdiv(M, BM)
    pn, pm = pid // m_tiles, pid % m_tiles
    acc = tl.zeros((BN, BM) if SWAP else (BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        x = x_desc.load([t, pm * BM, k0]).reshape(BM, BK)
        w = q_desc.load([t, pn * BN, k0]).reshape(BN, BK).to(x.dtype)
        if SWAP:
            acc = tl.dot(w, x.T, acc)
        else:
            acc = tl.dot(x, w.T, acc)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    sc, bi = _scale_bias(s_ptr, b_ptr, t, 0, rn, N, sst, ssn, sbt, HAS_BIAS, False)
    if SWAP:
        rm2, rn2 = rm[None, :], rn[:, None]
        acc = acc * sc[:, None] + bi[:, None]
    else:
        rm2, rn2 = rm[:, None], rn[None, :]
        acc = acc * sc[None, :] + bi[None, :]
    if GELU:
        acc = _gelu(acc)
    tl.store(y_ptr + t * syt + rm2 * sym + rn2 * syn, acc.to(y_ptr.dtype.element_ty), mask=(rm2 < M) & (rn2 < N))


def _tma_fits(x: Tensor, q: Tensor, groups: int) -> bool:
    """TMA path: Hopper or newer, per-channel scales, q a (T, K, N) view of (T, N, K)-contiguous
    storage, x with unit K stride, 16-byte aligned bases and strides."""
    t, k, n = q.shape
    return (groups == 1 and torch.cuda.get_device_capability(x.device)[0] >= 9
            and q.stride() == (n * k, 1, k) and k % 16 == 0 and q.data_ptr() % 16 == 0
            and x.stride(2) == 1 and x.stride(0) % 8 == 0 and x.stride(1) % 8 == 0 and x.data_ptr() % 16 == 0)


def _w8a16_tma(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None, gelu: bool) -> Tensor:
    t, m, k = x.shape
    n = q.shape[2]
    y = torch.empty((t, m, n), device=x.device, dtype=x.dtype)
    b = bias if bias is not None else y
    x_desc = TensorDescriptor(x, [t, m, k], list(x.stride()), [1, 64, 64])  # blocks set per config
    q_desc = TensorDescriptor(q.transpose(1, 2), [t, n, k], [n * k, k, 1], [1, 64, 64])
    grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]), t)
    _w8a16_tma_kernel[grid](x_desc, q_desc, scale, b, y, m, n, k, scale.stride(0), scale.stride(2), b.stride(0),
                            y.stride(0), y.stride(1), y.stride(2), HAS_BIAS=bias is not None, GELU=gelu)
    return y


def w8a16_bmm(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None, gelu: bool = False) -> Tensor:
    """x: (T, M, K) bf16/fp16 (any strides); q: (T, K, N) int8; scale: (T, G, N) -> (T, M, N)."""
    t, m, k = x.shape
    if m > 16 and _tma_fits(x, q, scale.shape[1]):
        return _w8a16_tma(x, q, scale, bias, gelu)
    n = q.shape[2]
    groups = scale.shape[1]
    # split K where even 64-wide tiles would not fill the GPU twice over (never before a GELU)
    split = 4 if not gelu and m > 16 and t * triton.cdiv(n, 64) * triton.cdiv(m, 64) < SPLIT_K_MAX_TILES else 1
    y = torch.zeros((t, m, n), device=x.device, dtype=torch.float32) if split > 1 else \
        torch.empty((t, m, n), device=x.device, dtype=x.dtype)
    b = bias if bias is not None else y
    grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]), t, split)
    _w8a16_bmm_kernel[grid](
        x, q, scale, b, y, m, n, k, k // groups,
        x.stride(0), x.stride(1), x.stride(2), q.stride(0), q.stride(1), q.stride(2),
        scale.stride(0), scale.stride(1), scale.stride(2), b.stride(0), y.stride(0), y.stride(1), y.stride(2),
        HAS_BIAS=bias is not None, GELU=gelu, GROUPED=groups > 1, SPLIT=split,
    )
    return y.to(x.dtype)


@triton.jit
def _tanh(x):
    """The hardware tanh (one MUFU instruction, relative error ~2^-11)."""
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def fp8_rows(x, FP8_MAX: tl.constexpr):
    """fp32 rows (ROWS, K) -> the rows scaled into E4M3's range (cast on store) and their scales."""
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12)
    return x * (FP8_MAX / amax)[:, None], amax / FP8_MAX


@triton.jit
def _fp8_rows_kernel(x_ptr, q_ptr, s_ptr, R, M, K, sst, FP8_MAX: tl.constexpr, GELU: tl.constexpr,
                     ROWS: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BK)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if GELU:  # tanh form, rounded back to x's dtype as F.gelu would leave it before quantization
        xf = x.to(tl.float32)
        x = (0.5 * xf * (1.0 + _tanh(0.7978845608028654 * (xf + 0.044715 * xf * xf * xf)))).to(x.dtype)
    q, scale = fp8_rows(x.to(tl.float32), FP8_MAX)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + (rows // M) * sst + rows % M, scale, mask=rows < R)


def fp8_row_scales(lead: tuple[int, ...], m: int, device: torch.device) -> Tensor:
    """Empty float32 (*lead, m, 1) whose (m, 1) slices start 16-byte aligned, as cuBLASLt wants
    its scales: rows are padded to a multiple of 4 in storage, so no per-GEMM copy is needed."""
    return torch.empty((*lead, -(-m // 4) * 4, 1), device=device, dtype=torch.float32)[..., :m, :]


def fp8_quantize_rows(x: Tensor, gelu: bool = False) -> tuple[Tensor, Tensor]:
    """x: (..., M, K) contiguous -> E4M3 (..., M, K) and float32 scales (..., M, 1): one read of x, one write.

    Same rounding as ``ugsep.quant.fp8.quantize_fp8_rows`` (which reads x four times through
    temporaries) up to a reciprocal; ``gelu`` quantizes GELU(x) without writing GELU(x) out, with
    GELU in its tanh form: exact erf makes the kernel compute-bound, and the two differ by
    < 1e-3, far under E4M3's rounding step (1/16 relative).
    """
    m, k = x.shape[-2], x.shape[-1]
    q = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    s = fp8_row_scales(x.shape[:-2], m, x.device)
    r = x.numel() // k
    bk = triton.next_power_of_2(k)
    rows = max(1, min(16, 4096 // bk))
    _fp8_rows_kernel[(triton.cdiv(r, rows),)](x, q, s, r, m, k, s.stride(-3) if s.dim() > 2 else 0,
                                              FP8_MAX=E4M3_MAX, GELU=gelu,
                                              ROWS=rows, BK=bk, num_warps=4 if bk <= 4096 else 8)
    return q, s
