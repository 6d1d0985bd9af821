"""CUTLASS's own Hopper mixed-input GEMM vs our Triton W8A16 kernel vs bf16, on the per-token FFN shapes (GPU).

A yardstick, not a code path of ugsep: is the W8A16 gap to the targets ours, or what a mature
mixed-input GEMM reaches on this card too? Builds benchmarks/cutlass/w8a16_mixed_input.cu in a few
tile configs with nvcc (sm_90a) against CUTLASS's headers (the `nvidia-cutlass` wheel, or
--cutlass DIR), then times every config with its weights read from HBM, as quant_kernels.py does.

    pip install nvidia-cutlass && python benchmarks/cutlass_w8a16.py [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from quant_kernels import peak_bandwidth
from triton.testing import do_bench_cudagraph

from ugsep.quant.int8 import quantize_int8
from ugsep.quant.triton_kernels import w8a16_bmm

SOURCE = Path(__file__).parent / "cutlass" / "w8a16_mixed_input.cu"
# (name, tile over output channels, tile over rows, tile over K, cluster over channels, schedule)
# schedule: 0 cooperative persistent, 1 pingpong persistent, 2 cooperative stream-K
CONFIGS = [
    ("coop_128x64x64", 128, 64, 64, 1, 0),
    ("coop_128x64x128", 128, 64, 128, 1, 0),
    ("streamk_128x64x128", 128, 64, 128, 1, 2),
    ("coop_128x64x64_cluster2", 128, 64, 64, 2, 0),
    ("coop_128x16x128", 128, 16, 128, 1, 0),
    ("pingpong_64x32x128", 64, 32, 128, 1, 1),
]


def cutlass_source_dir(given: str | None) -> Path:
    """CUTLASS's source root (with include/ and tools/util/include): --cutlass, else the nvidia-cutlass wheel's."""
    if given:
        return Path(given)
    try:
        import cutlass_library
    except ImportError as e:
        raise SystemExit("CUTLASS headers not found: `pip install nvidia-cutlass` or pass --cutlass DIR") from e
    return Path(cutlass_library.__file__).parent / "source"


def build(cutlass: Path, out: Path, nvcc: str, jobs: int) -> Path:
    """Compile each config to an object and link them into one shared library (reused while the source is older)."""
    lib = out / "libw8a16_cutlass.so"
    if lib.exists() and lib.stat().st_mtime > SOURCE.stat().st_mtime:
        return lib
    out.mkdir(parents=True, exist_ok=True)
    cuda_home = Path(nvcc).resolve().parent.parent
    flags = ["-std=c++17", "-arch=sm_90a", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
             f"-I{cutlass / 'include'}", f"-I{cutlass / 'tools/util/include'}", f"-I{cuda_home / 'include/cccl'}"]

    def compile_one(cfg) -> Path:
        name, tm, tn, tk, cluster, sched = cfg
        obj = out / f"{name}.o"
        subprocess.run([nvcc, *flags, f"-DTILE_M={tm}", f"-DTILE_N={tn}", f"-DTILE_K={tk}", f"-DCLUSTER_M={cluster}",
                        f"-DSCHED={sched}", f"-DNAME=w8a16_{name}", "-c", str(SOURCE), "-o", str(obj)], check=True)
        return obj

    print(f"building {len(CONFIGS)} CUTLASS configs with {nvcc} ({jobs} at a time, about a minute each)", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        objs = list(pool.map(compile_one, CONFIGS))
    subprocess.run([nvcc, "-shared", "-arch=sm_90a", f"-L{cuda_home / 'lib'}", f"-L{cuda_home / 'lib64'}",
                    *map(str, objs), "-o", str(lib)], check=True)
    return lib


def load(lib: Path) -> dict:
    dll = ctypes.CDLL(str(lib))
    fns = {}
    for name, *_ in CONFIGS:
        f = getattr(dll, f"w8a16_{name}")
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [ctypes.c_longlong] * 2 + [ctypes.c_int,
                                                                                             ctypes.c_void_p]
        fns[name] = f
    return fns


def cutlass_bmm(fn, x: torch.Tensor, q_tnk: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (T, M, K) bf16 with unit K stride; q_tnk (T, N, K) int8; scale (T, 1, N) fp32; bias (T, N) -> (T, M, N)."""
    t, m, k = x.shape
    n = q_tnk.shape[1]
    y = torch.empty(t, m, n, device=x.device, dtype=torch.bfloat16)
    rc = fn(q_tnk.data_ptr(), x.data_ptr(), scale.data_ptr(), bias.data_ptr(), y.data_ptr(), n, m, k, t,
            x.stride(1), x.stride(0), torch.cuda.get_device_properties().multi_processor_count,
            torch.cuda.current_stream().cuda_stream)
    if rc:
        raise RuntimeError(f"CUTLASS GEMM failed at step {rc} (see w8a16_mixed_input.cu)")
    return y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cutlass", help="CUTLASS source root (default: the nvidia-cutlass wheel's)")
    p.add_argument("--build", default=os.path.expanduser("~/.cache/ugsep/cutlass_w8a16"), help="build folder")
    p.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    p.add_argument("--jobs", type=int, default=min(len(CONFIGS), os.cpu_count() or 1))
    p.add_argument("--rows", default="1,8,32,64,128,256", help="user rows M to time, comma-separated")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    fns = load(build(cutlass_source_dir(a.cutlass), Path(a.build), a.nvcc, a.jobs))

    t, d = 16, 768
    peak = peak_bandwidth()
    props = torch.cuda.get_device_properties()
    print(f"{torch.cuda.get_device_name()}  peak {peak:.0f} GB/s  T={t} D={d}  CUDA graph replays, weights from HBM")
    print(f"{'layer':>5} {'M':>5} {'bf16 us':>8} {'ours us':>8} {'cutlass us':>10} {'best cutlass config':>24} "
          f"{'ours/bf16':>10} {'cutlass/bf16':>13} {'cutlass/ours':>13}")
    rows = []
    for layer, k, n in (("fc1", d, 4 * d), ("fc2", 4 * d, d)):
        w = torch.randn(t, k, n, device="cuda") / k**0.5
        q, s = quantize_int8(w)
        q_tnk = q.transpose(1, 2).contiguous()  # the module's (T, N, K) storage
        bias = (0.1 * torch.randn(t, n, device="cuda")).bfloat16()
        copies = -(-3 * props.L2_cache_size // q.numel())
        qs, wbs = [q_tnk.clone() for _ in range(copies)], [w.bfloat16() for _ in range(copies)]
        for m in map(int, a.rows.split(",")):
            x = torch.randn(m, t, k, device="cuda", dtype=torch.bfloat16).transpose(0, 1)  # (T, M, K) strided
            ref = torch.baddbmm(bias.float().unsqueeze(1), x.float(), q.float() * s)
            w8a16_bmm(x, q_tnk.transpose(1, 2), s, bias)  # autotune outside the graph capture
            time = lambda fn: do_bench_cudagraph(fn, rep=200) / copies * 1e3
            r = {"layer": layer, "M": m,
                 "bf16_us": time(lambda: [torch.baddbmm(bias.unsqueeze(1), x, w_) for w_ in wbs]),
                 "ours_us": time(lambda: [w8a16_bmm(x, q_.transpose(1, 2), s, bias) for q_ in qs]), "cutlass_us": {}}
            for name, fn in fns.items():
                y = cutlass_bmm(fn, x, q_tnk, s, bias)  # allocates its workspace outside the capture
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                if err > 1e-2:
                    raise SystemExit(f"{name} at {layer} M={m}: max error {err:.1e} of the output's range")
                r["cutlass_us"][name] = time(lambda: [cutlass_bmm(fn, x, q_, s, bias) for q_ in qs])
            best = min(r["cutlass_us"], key=r["cutlass_us"].get)
            bc = r["cutlass_us"][best]
            rows.append(r)
            print(f"{layer:>5} {m:>5} {r['bf16_us']:>8.1f} {r['ours_us']:>8.1f} {bc:>10.1f} {best:>24} "
                  f"{r['bf16_us'] / r['ours_us']:>9.2f}x {r['bf16_us'] / bc:>12.2f}x {r['ours_us'] / bc:>12.2f}x",
                  flush=True)
    if a.json:
        print(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()
