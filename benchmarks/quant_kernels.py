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
from triton.testing import do_bench

from ugsep.quant.fp8 import quantize_fp8_rows, quantize_fp8_weight
from ugsep.quant.int8 import quantize_int8
from ugsep.quant.triton_kernels import w8a16_bmm

PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0}


def peak_bandwidth() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBPS.items() if k in name), 3350.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--mult", type=int, default=4)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    t, d, h = a.tokens, a.d_model, a.mult * a.d_model
    peak = peak_bandwidth()
    print(f"{torch.cuda.get_device_name()}  peak {peak:.0f} GB/s  T={t} D={d} hidden={h}")
    rows = []
    print(f"{'layer':>5} {'M':>5} {'bf16 us':>9} {'w8a16 us':>9} {'speedup':>8} {'GB/s':>7} {'% peak':>7}")
    for name, k, n in (("fc1", d, h), ("fc2", h, d)):
        w = torch.randn(t, k, n, device="cuda") / k**0.5
        wb = w.bfloat16()
        q, s = quantize_int8(w)
        qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # the module's (T, N, K) storage, viewed (T, K, N)
        bias = torch.zeros(t, n, device="cuda", dtype=torch.bfloat16)
        for m in (1, 8, 64, 256, 1024):
            x = torch.randn(m, t, k, device="cuda", dtype=torch.bfloat16).transpose(0, 1)  # (T, M, K) strided
            t_bf16 = do_bench(lambda: torch.baddbmm(bias.unsqueeze(1), x, wb), warmup=50, rep=300)
            t_q = do_bench(lambda: w8a16_bmm(x, qt, s, bias), warmup=50, rep=300)
            moved = t * (k * n + 4 * n + 2 * m * k + 2 * m * n + 2 * n)
            gbps = moved / (t_q * 1e-3) / 1e9
            r = {"layer": name, "M": m, "bf16_us": t_bf16 * 1e3, "w8a16_us": t_q * 1e3,
                 "speedup": t_bf16 / t_q, "gbps": gbps, "pct_peak": 100 * gbps / peak}
            rows.append(r)
            print(f"{name:>5} {m:>5} {r['bf16_us']:>9.1f} {r['w8a16_us']:>9.1f} {r['speedup']:>7.2f}x "
                  f"{gbps:>7.0f} {r['pct_peak']:>6.0f}%")

    print(f"\nitem side, T_g={t // 2} positions, K={d} N={h}")
    print(f"{'M':>6} {'bf16 TF/s':>10} {'fp8 TF/s':>9} {'speedup':>8}")
    tg = t // 2
    w = torch.randn(tg, d, h, device="cuda") / d**0.5
    wb = w.bfloat16()
    wq, ws = quantize_fp8_weight(w)
    wq_t = wq.transpose(1, 2).contiguous()  # (T, N, K): column-major B for _scaled_mm
    fp8_rows = []
    for m in (8192, 16384, 32768, 65536):
        x = torch.randn(tg, m, d, device="cuda", dtype=torch.bfloat16)

        def fp8():
            xq, xs = quantize_fp8_rows(x)
            return [torch._scaled_mm(xq[i], wq_t[i].t(), scale_a=xs[i], scale_b=ws[i].unsqueeze(0),
                                     out_dtype=torch.bfloat16) for i in range(tg)]

        t_bf16 = do_bench(lambda: torch.bmm(x, wb), warmup=20, rep=200)
        t_fp8 = do_bench(fp8, warmup=20, rep=200)
        flops = 2 * tg * m * d * h
        r = {"M": m, "bf16_tflops": flops / t_bf16 / 1e9, "fp8_tflops": flops / t_fp8 / 1e9, "speedup": t_bf16 / t_fp8}
        fp8_rows.append(r)
        print(f"{m:>6} {r['bf16_tflops']:>10.0f} {r['fp8_tflops']:>9.0f} {r['speedup']:>7.2f}x")
    if a.json:
        print(json.dumps({"device": torch.cuda.get_device_name(), "w8a16": rows, "fp8": fp8_rows}))


if __name__ == "__main__":
    main()
