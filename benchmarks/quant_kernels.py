"""W8A16 and FP8 kernels vs bf16 on the per-token FFN shapes of a large config (GPU).

User side (few rows, memory-bound): bf16 torch.bmm vs our Triton W8A16 kernel for the batched
per-token product, with achieved GB/s against the card's peak. Item side (many rows): bf16
bmm vs FP8 torch._scaled_mm per position (activation quantization included).

    python benchmarks/quant_kernels.py [--json]
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench, do_bench_cudagraph

from ugsep.layers import ADDMM_MIN_ROWS, per_position_addmm
from ugsep.quant.fp8 import fp8_bmm, quantize_fp8_weight
from ugsep.quant.int8 import quantize_int8
from ugsep.quant.triton_kernels import fp8_quantize_rows, w8a16_bmm

PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0}


def peak_bandwidth() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBPS.items() if k in name), 3350.0)


@triton.jit
def _stream_read(p, out, n, BLOCK: tl.constexpr):
    """Read n int32 words and keep one xor per program: a kernel that only streams bytes from HBM."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + tl.program_id(0), tl.xor_sum(tl.load(p + offs, mask=offs < n, other=0), axis=0))


def stream_read_ms(bufs: list[torch.Tensor], bench) -> float:
    """Time to read one of bufs (int8, same size) with _stream_read: the ceiling for any kernel that
    must read that many bytes, fixed launch and ramp costs included."""
    words = [b.reshape(-1).view(torch.int32) for b in bufs]
    n, block = words[0].numel(), 2048
    out = torch.empty(triton.cdiv(n, block), device=words[0].device, dtype=torch.int32)
    return bench(lambda: [_stream_read[(triton.cdiv(n, block),)](w, out, n, BLOCK=block) for w in words],
                 50, 300) / len(words)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--mult", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.add_argument("--eager", action="store_true",
                   help="time eager launches (CPU launch cost included) instead of CUDA graph replays")
    a = p.parse_args()
    bench = (lambda fn, warmup, rep: do_bench(fn, warmup=warmup, rep=rep)) if a.eager else \
        (lambda fn, warmup, rep: do_bench_cudagraph(fn, rep=rep))
    t, d, h = a.tokens, a.d_model, a.mult * a.d_model
    layers = (("fc1", d, h), ("fc2", h, d))  # the per-token FFN's two products: (name, K, N)
    peak = peak_bandwidth()
    print(f"{torch.cuda.get_device_name()}  peak {peak:.0f} GB/s  T={t} D={d} hidden={h}  "
          f"timing: {'eager launches' if a.eager else 'CUDA graph replays'}; W8A16 and bf16 weights read from HBM "
          f"(rotating over copies that add up to 3x the L2 cache)")
    rows = []
    print("read us: a kernel that only reads the int8 weights (as many bytes as W8A16 moves at 1 row); "
          "% read: that time over W8A16's")
    print(f"{'layer':>5} {'M':>5} {'bf16 us':>9} {'w8a16 us':>9} {'speedup':>8} {'GB/s':>7} {'% peak':>7} "
          f"{'read us':>8} {'% read':>7}")
    for name, k, n in layers:
        w = torch.randn(t, k, n, device="cuda") / k**0.5
        wb = w.bfloat16()
        q, s = quantize_int8(w)
        qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # the module's (T, N, K) storage, viewed (T, K, N)
        bias = torch.zeros(t, n, device="cuda", dtype=torch.bfloat16)
        # the weights could sit in L2: rotating over copies (3x L2 in all) makes every product read HBM
        copies = -(-3 * torch.cuda.get_device_properties().L2_cache_size // q.numel())
        qts, wbs = [qt.clone() for _ in range(copies)], [wb.clone() for _ in range(copies)]
        t_read = stream_read_ms([q_.transpose(1, 2) for q_ in qts], bench)
        for m in (1, 8, 64, 256, 1024):
            x = torch.randn(m, t, k, device="cuda", dtype=torch.bfloat16).transpose(0, 1)  # (T, M, K) strided
            w8a16_bmm(x, qt, s, bias)  # autotune outside the graph capture
            t_bf16 = bench(lambda: [torch.baddbmm(bias.unsqueeze(1), x, w_) for w_ in wbs], 50, 300) / copies
            t_q = bench(lambda: [w8a16_bmm(x, q_, s, bias) for q_ in qts], 50, 300) / copies
            moved = t * (k * n + 4 * n + 2 * m * k + 2 * m * n + 2 * n)
            gbps = moved / (t_q * 1e-3) / 1e9
            r = {"layer": name, "M": m, "bf16_us": t_bf16 * 1e3, "w8a16_us": t_q * 1e3,
                 "speedup": t_bf16 / t_q, "gbps": gbps, "pct_peak": 100 * gbps / peak,
                 "read_us": t_read * 1e3, "pct_read": 100 * t_read / t_q}
            rows.append(r)
            print(f"{name:>5} {m:>5} {r['bf16_us']:>9.1f} {r['w8a16_us']:>9.1f} {r['speedup']:>7.2f}x "
                  f"{gbps:>7.0f} {r['pct_peak']:>6.0f}% {r['read_us']:>8.1f} {r['pct_read']:>6.0f}%")

    tg = t // 2
    print(f"\nitem side, T_g={tg} positions, TFLOP/s. bf16: per-position addmm with the bias in the epilogue "
          f"(what PerTokenLinear runs from {ADDMM_MIN_ROWS} rows) and bmm without bias. FP8 "
          f"(ugsep.quant.fp8.fp8_bmm, bias included): with the row quantization, and on rows already quantized, "
          f"as the fused item side runs it (its LayerNorm and GELU kernels write FP8 rows)")
    print(f"{'layer':>5} {'M':>6} {'bf16 addmm':>11} {'bf16 bmm':>9} {'fp8+quant':>10} {'fp8':>6} {'vs addmm':>9} "
          f"{'vs bmm':>7}")
    fp8_rows = []
    for name, k, n in layers:
        w = torch.randn(tg, k, n, device="cuda") / k**0.5
        wb = w.bfloat16()
        wq, ws = quantize_fp8_weight(w)
        wq_t = wq.transpose(1, 2).contiguous()  # (T, N, K): column-major B for _scaled_mm
        bias = torch.zeros(tg, n, device="cuda", dtype=torch.bfloat16)
        for m in (8192, 16384, 32768, 65536):
            x = torch.randn(tg, m, k, device="cuda", dtype=torch.bfloat16)
            x_fp8 = fp8_quantize_rows(x)
            fp8_bmm(x, wq_t, ws, bias, triton_rows=True)
            t_model = bench(lambda: per_position_addmm(x, wb, bias), 20, 200)
            t_bmm = bench(lambda: torch.bmm(x, wb), 20, 200)  # bf16 without the bias: its fastest form
            t_fp8q = bench(lambda: fp8_bmm(x, wq_t, ws, bias, triton_rows=True), 20, 200)
            t_fp8 = bench(lambda: fp8_bmm(None, wq_t, ws, bias, x_fp8), 20, 200)
            tf = lambda ms: 2 * tg * m * k * n / ms / 1e9
            r = {"layer": name, "M": m, "bf16_addmm_tflops": tf(t_model), "bf16_bmm_tflops": tf(t_bmm),
                 "fp8_with_quant_tflops": tf(t_fp8q), "fp8_tflops": tf(t_fp8),
                 "speedup": t_model / t_fp8, "speedup_vs_bmm": t_bmm / t_fp8,
                 "speedup_with_quant": t_model / t_fp8q}
            fp8_rows.append(r)
            print(f"{name:>5} {m:>6} {r['bf16_addmm_tflops']:>11.0f} {r['bf16_bmm_tflops']:>9.0f} "
                  f"{r['fp8_with_quant_tflops']:>10.0f} {r['fp8_tflops']:>6.0f} "
                  f"{r['speedup']:>8.2f}x {r['speedup_vs_bmm']:>6.2f}x")
    if a.json:
        print(json.dumps({"device": torch.cuda.get_device_name(), "w8a16": rows, "fp8": fp8_rows}))


if __name__ == "__main__":
    main()
