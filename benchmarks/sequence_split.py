"""Candidates scored per second with behaviour sequences (arch=hyformer): the full forward vs the split path.

The full forward (the reference) gives every candidate its own copy of the user's tokens and sequence, so the
sequence is encoded once per candidate. The split path runs ``encode_users`` once per user (sequence encoders,
K/V, user queries) and ``score_groups`` per candidate (candidate queries decode over their user's cached K/V);
both are timed together, as serving runs them. One model, one process, the same data for both paths, over
sequence lengths L and candidates per user C. Each cell prints both speeds, the measured speed-up, the FLOPs
ratio ``flops_per_candidate(1) / flops_per_candidate(C)`` and measured / FLOPs; the item side alone
(``score_groups`` on a ready state) with its achieved FLOP/s, and on the GPU its ms beside the same call on
torch ops (``eager ms``, where the timed one runs fused) and back to back (``stream``: calls queued one after
another with one wait at the end, as a batch scorer's steady state runs them, so the host's launches of one
call overlap the GPU's work on the one before); and the largest |split - full| logit difference,
checked once per cell outside the timing (float32: a tight bound; bf16: a loose one, reported).

On CUDA (default when available): bf16, d_model 512 with T = 16 tokens, 32768 candidates per call, but at most
2**21 sequence events (rows x L) per call for the full forward (its activations are rows x L x 8 D), so at
L=1000 it runs ~2000 rows a call; the split path encodes at most as many users. CUDA events, median of repeats
after warm-up. On the CPU (``--cpu`` or no CUDA): float32, d_model 64, a smaller grid.

    python benchmarks/sequence_split.py [--cpu] [--quick] [--encoder swiglu|attention] [--compile]
                                        [--collective-kv] [--profile] [--json]

``--profile`` adds, per cell, the item side's kernels under torch.profiler: device ms per call by kernel,
the largest first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from ugsep.data.synthetic import synthetic_sequence_spec
from ugsep.features import PAD_ID, FeatureSpec, Field, FieldKind
from ugsep.kernels import Backend
from ugsep.model import ModelConfig, RankingModel

# Token counts of the default config (T = 4 + 4 + 4 + 4 = 16 positions), two layers, the token-mixer head.
TOKENS = dict(n_user_tokens=4, n_group_tokens=4, n_user_queries=4, n_group_queries=4, n_layers=2, pool="group")
GPU = dict(d_model=512, lengths=(50, 200, 1000), candidates=(1, 10, 100, 500), rows=32768, max_events=2**21,
           warmup=2, repeats=10)
CPU = dict(d_model=64, lengths=(50, 200), candidates=(1, 10, 100), rows=512, max_events=2**16, warmup=1, repeats=5)
QUICK = dict(d_model=32, lengths=(16,), candidates=(1, 8), rows=32, max_events=2**10, warmup=1, repeats=2)
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM bf16 dense tensor-core peak; the H200 has the same compute
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}  # max |split - full| / max(1, max |full|)


def make_users(spec: FeatureSpec, n_users: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """User fields and sequence fields, random within their buckets; sequences of length L right-aligned
    (PAD_ID first, the most recent event last), each user's history length uniform in 0..L."""
    cols = {f.name: _column(f, n_users, rng) for f in spec.user_fields}
    seq_len = spec.sequence_len
    length = rng.integers(0, seq_len + 1, n_users)
    valid = np.arange(seq_len)[None, :] >= seq_len - length[:, None]  # (U, L)
    for f in spec.sequence_fields:
        x = _column(f, n_users * seq_len, rng).reshape(n_users, seq_len)
        cols[f.name] = np.where(valid, x, 0.0 if f.kind == FieldKind.DENSE else PAD_ID).astype(x.dtype)
    return cols


def make_items(spec: FeatureSpec, n_rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Item and context fields of ``n_rows`` candidates, random within their buckets."""
    return {f.name: _column(f, n_rows, rng) for f in spec.candidate_fields}


def _column(f: Field, n: int, rng: np.random.Generator) -> np.ndarray:
    if f.kind == FieldKind.DENSE:
        return rng.exponential(10.0, n).astype(np.float32)
    if f.kind == FieldKind.CATEGORICAL:
        return rng.integers(0, f.buckets, n, dtype=np.int64)
    ids = rng.integers(0, f.buckets, (n, f.max_len), dtype=np.int64)  # multi: 0..max_len valid entries
    count = rng.integers(0, f.max_len + 1, n)
    return np.where(np.arange(f.max_len)[None, :] < count[:, None], ids, PAD_ID)


def to_device(cols: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in cols.items()}


def first_users(users, items, idx, n_users: int, per_user: int):
    """The first ``n_users`` users and their candidates (candidates are laid out user by user)."""
    n = n_users * per_user
    return {k: v[:n_users] for k, v in users.items()}, {k: v[:n] for k, v in items.items()}, idx[:n]


def timed(fn, device: torch.device, warmup: int, repeats: int, back_to_back: bool = False) -> float:
    """Median seconds per call over ``repeats`` calls after ``warmup`` calls (CUDA events on the GPU).
    ``back_to_back`` (GPU only): the ``repeats`` calls queued one after another with one wait at the
    end, their mean."""
    for _ in range(warmup):
        fn()
    if back_to_back:
        return _event_seconds(fn, repeats) / repeats
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            times.append(_event_seconds(fn, 1))
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def _event_seconds(fn, calls: int) -> float:
    """Seconds between CUDA events around ``calls`` calls of ``fn``, waited for once at the end."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def build_model(seq_len: int, encoder: str, d_model: int, device: torch.device, dtype: torch.dtype,
                collective_kv: bool = False) -> RankingModel:
    """The same weights for every L (seeded), with a head that spreads logits, so the agreement check means
    something (as tests/conftest.py's make_model does)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="hyformer", seq_encoder=encoder, d_model=d_model, collective_kv=collective_kv, **TOKENS)
    model = RankingModel(synthetic_sequence_spec(seq_len), cfg)
    with torch.no_grad():
        model.head[-1].weight.mul_(20.0)
    return model.to(device, dtype).eval()


def check_agreement(model, users, items, idx) -> tuple[float, float]:
    """(max |split - full|, max |full|) of the logits, on the full forward's inputs."""
    full = model(users, items, idx).float()
    split = model.score_groups(model.encode_users(users), items, idx).float()
    return float((split - full).abs().max()), float(full.abs().max())


def run_cell(model, paths, spec, seq_len: int, per_user: int, p: dict, device, dtype, seed: int) -> dict:
    """One (L, C) cell: both paths timed on their own batch (the full forward's is a prefix of the split's)."""
    cap_users = max(p["max_events"] // seq_len, 1)  # users (split) or rows (full) whose sequences fit a call
    n_users = max(1, min(p["rows"] // per_user, cap_users))
    n_full = max(1, min(p["rows"], cap_users) // per_user)
    rng = np.random.default_rng(seed)
    users = to_device(make_users(spec, n_users, rng), device)
    items = to_device(make_items(spec, n_users * per_user, rng), device)
    idx = torch.arange(n_users, device=device).repeat_interleave(per_user)
    full, encode, score = paths

    def run_full(n: int) -> tuple[float, float, float]:
        fu, fi, fidx = first_users(users, items, idx, n, per_user)
        diff, scale = check_agreement(model, fu, fi, fidx)
        return diff, scale, timed(lambda: full(fu, fi, fidx), device, p["warmup"], p["repeats"])

    def run_split(n: int) -> tuple[float, float, float]:
        su, si, sidx = first_users(users, items, idx, n, per_user)
        t_split = timed(lambda: score(encode(su), si, sidx), device, p["warmup"], p["repeats"])
        state = encode(su)
        t_item = timed(lambda: score(state, si, sidx), device, p["warmup"], p["repeats"])
        if p.get("profile"):
            print_profile(lambda: score(state, si, sidx), device)
        t_stream = timed(lambda: score(state, si, sidx), device, p["warmup"], p["repeats"], back_to_back=True) \
            if device.type == "cuda" else math.nan
        t_eager = math.nan  # the item side on torch ops, where the timed one runs fused (Triton + varlen flash)
        if model.kernels is Backend.TRITON:
            backend = model.backend
            try:
                model.use_kernels(Backend.TORCH)
                t_eager = timed(lambda: model.score_groups(state, si, sidx), device, p["warmup"], p["repeats"])
            finally:
                model.use_kernels(backend)
        return t_split, t_item, t_stream, t_eager, timed(lambda: encode(su), device, p["warmup"], p["repeats"])

    with torch.inference_mode():
        (diff, scale, t_full), n_full = halve_until_it_fits(run_full, n_full)
        (t_split, t_item, t_stream, t_eager, t_user), n_users = halve_until_it_fits(run_split, n_users)
    item_flops = model.flops_per_candidate(math.inf)  # per candidate: the candidate side and the head
    user_flops = model.flops_per_candidate(1.0) - item_flops  # per user: all that reads the user alone
    flops_ratio = model.flops_per_candidate(1.0) / model.flops_per_candidate(per_user)
    rows_full, rows_split = n_full * per_user, n_users * per_user
    speedup = (rows_split / t_split) / (rows_full / t_full)
    bound = TOLERANCE[dtype] * max(1.0, scale)
    return {
        "seq_len": seq_len, "candidates_per_user": per_user, "rows_full": rows_full, "rows_split": rows_split,
        "full_cand_per_s": rows_full / t_full, "split_cand_per_s": rows_split / t_split, "speedup": speedup,
        "flops_ratio": flops_ratio, "measured_over_flops": speedup / flops_ratio,
        "full_flops_per_s": model.flops_per_candidate(1.0) * rows_full / t_full,
        "item_flops_per_s": item_flops * rows_split / t_item, "user_flops_per_s": user_flops * n_users / t_user,
        "item_stream_flops_per_s": item_flops * rows_split / t_stream,
        "item_ms": t_item * 1e3, "item_stream_ms": t_stream * 1e3, "eager_item_ms": t_eager * 1e3,
        "user_ms": t_user * 1e3,
        "max_abs_diff": diff, "max_abs_logit": scale, "diff_bound": bound, "agrees": diff <= bound,
    }


def print_profile(fn, device: torch.device, calls: int = 3, top: int = 14) -> None:
    """Device time per call of ``fn``'s kernels under torch.profiler, the largest first."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"] if device.type == "cuda" else \
        list(prof.key_averages())
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels.sort(key=lambda e: -getattr(e, attr))
    total = sum(getattr(e, attr) for e in kernels) / calls / 1e3
    print(f"    profile: {total:.3f} ms of kernels per call; top {top}:")
    for e in kernels[:top]:
        print(f"    {getattr(e, attr) / calls / 1e3:8.3f} ms {e.count // calls:4d}x  {e.key[:100]}")


def halve_until_it_fits(run, n_users: int):
    """(run(n), n) for the largest n = n_users / 2**k whose call fits in GPU memory."""
    while True:
        try:
            return run(n_users), n_users
        except torch.cuda.OutOfMemoryError:
            if n_users == 1:
                raise
        n_users //= 2
        torch.cuda.empty_cache()


def compiled_paths(model, use_compile: bool):
    """(full, encode_users, score_groups): the model's own methods, or under torch.compile; the
    item side is left as it is where it runs fused (Triton kernels and varlen flash attention)."""
    if not use_compile:
        return model, model.encode_users, model.score_groups
    torch._dynamo.reset()  # compiled for this cell's shapes (the first warm-up call compiles)
    fused = model.kernels is Backend.TRITON
    return (torch.compile(model, dynamic=False), torch.compile(model.encode_users, dynamic=False),
            model.score_groups if fused else torch.compile(model.score_groups, dynamic=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="float32 on the CPU with the small grid, even with CUDA")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds on the CPU)")
    ap.add_argument("--encoder", choices=("swiglu", "attention"), default="swiglu", help="sequence encoder")
    ap.add_argument("--d-model", type=int, default=0, help="token width (default 512 GPU, 64 CPU); divisible by 16")
    ap.add_argument("--lengths", default="", help="sequence lengths L, comma-separated (default 50,200,1000 GPU)")
    ap.add_argument("--candidates", default="", help="candidates per user (default 1,10,100,500 GPU, 1,10,100 CPU)")
    ap.add_argument("--rows", type=int, default=0, help="candidates per call (default 32768 GPU, 512 CPU)")
    ap.add_argument("--max-events", type=int, default=0,
                    help="cap on rows x L per call of the full forward, and on users x L of the split "
                         "(default 2**21 GPU, 2**16 CPU)")
    ap.add_argument("--repeats", type=int, default=0, help="timed calls per measurement, the median is kept")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                    help="peak for the item side's %% of peak (default 989: H100 SXM bf16 dense; H200 the same)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (default: torch's; 1 under --quick; 1 avoids contention on a busy machine)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the full forward and encode_users, and score_groups unless it runs fused")
    ap.add_argument("--collective-kv", action="store_true",
                    help=f"the model keeps its sequence K/V as CollectiveKV pool indices + user dims (the config's "
                         f"defaults: pool {ModelConfig.kv_pool_size:,}, {ModelConfig.kv_user_dim} user dims)")
    ap.add_argument("--profile", action="store_true", help="print the item side's kernels per cell (torch.profiler)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of results")
    a = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    p = dict(QUICK if a.quick else GPU if device.type == "cuda" else CPU)
    p.update({k: v for k, v in dict(d_model=a.d_model, rows=a.rows, max_events=a.max_events,
                                     repeats=a.repeats, profile=a.profile).items() if v})
    if a.lengths:
        p["lengths"] = tuple(int(x) for x in a.lengths.split(","))
    if a.candidates:
        p["candidates"] = tuple(int(x) for x in a.candidates.split(","))
    gpu = device.type == "cuda"
    if a.threads or a.quick:
        torch.set_num_threads(a.threads or 1)
    unit, scale = ("TF/s", 1e12) if gpu else ("GF/s", 1e9)
    name = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    dims = dict(d_model=p["d_model"], encoder=a.encoder, **TOKENS)
    print(f"device={name} dtype={str(dtype).removeprefix('torch.')} compile={a.compile}")
    print(f"dims={dims} (T=16, n_heads=4, ffn_mult=4)")
    print(f"candidates/call={p['rows']} (full forward capped at {p['max_events']:,} sequence events = rows x L per "
          f"call; split: at most as many users), median of {p['repeats']} after {p['warmup']} warm-up"
          + (f", item-side peak {a.peak_tflops:g} TFLOP/s bf16 dense (H100 SXM; H200 the same compute)" if gpu else ""))
    print(f"{'L':>5} {'cand/user':>9} {'rows full/split':>15} {'full cand/s':>12} {'split cand/s':>12} "
          f"{'speed-up':>8} {'FLOPs ratio':>11} {'meas/FLOPs':>10} {'full ' + unit:>10} {'item ' + unit:>10} "
          + (f"{'item %peak':>10} {'item ms':>8} {'stream %peak':>12} {'stream ms':>9} {'eager ms':>8} "
             if gpu else "") + f"{'max|diff|':>9}")
    results, states = [], {}
    for seq_len in p["lengths"]:
        model = build_model(seq_len, a.encoder, p["d_model"], device, dtype, a.collective_kv)
        layout = model.state_layout
        f32, bf16 = layout.bytes_per_user(torch.float32), layout.bytes_per_user(torch.bfloat16)
        kv, plain = layout.kv_bytes_per_user(), layout.uncompressed_kv_bytes_per_user()
        states[seq_len] = {"floats": layout.width, "bytes_float32": f32, "bytes_bf16": bf16,
                           "kv_bytes": kv, "kv_bytes_plain_bf16": plain}
        print(f"L={seq_len}: user state {layout.width:,} floats/user = {f32 / 1e6:.3f} MB float32, "
              f"{bf16 / 1e6:.3f} MB bf16; sequence K/V as kept {kv:,} bytes/user, plain bf16 K/V {plain:,} "
              f"({plain / kv:.1f}x)")
        for per_user in p["candidates"]:
            paths = compiled_paths(model, a.compile)
            r = run_cell(model, paths, model.spec, seq_len, per_user, p, device, dtype, seed=seq_len * 1000 + per_user)
            r["state_bytes_per_user"] = layout.bytes_per_user(dtype)
            results.append(r)
            pct = 100 / (a.peak_tflops * 1e12)
            peak = (f"{pct * r['item_flops_per_s']:>9.1f}% {r['item_ms']:>8.3g} "
                    f"{pct * r['item_stream_flops_per_s']:>11.1f}% {r['item_stream_ms']:>9.3g} "
                    f"{r['eager_item_ms']:>8.3g} " if gpu else "")
            flag = "" if r["agrees"] else f" > bound {r['diff_bound']:.2g}!"
            print(f"{seq_len:>5} {per_user:>9} {r['rows_full']:>7}/{r['rows_split']:<7} {r['full_cand_per_s']:>12,.0f} "
                  f"{r['split_cand_per_s']:>12,.0f} {r['speedup']:>7.2f}x {r['flops_ratio']:>10.2f}x "
                  f"{r['measured_over_flops']:>10.2f} {r['full_flops_per_s'] / scale:>10.3g} "
                  f"{r['item_flops_per_s'] / scale:>10.3g} {peak}{r['max_abs_diff']:>9.2g}{flag}", flush=True)
        del model
        if gpu:
            torch.cuda.empty_cache()
    bad = [r for r in results if not r["agrees"]]
    bound = TOLERANCE[dtype]
    print(f"split vs full: max |diff| {max(r['max_abs_diff'] for r in results):.2g} over all cells "
          f"(bound {bound:g} x max(1, max|logit|); max|logit| {max(r['max_abs_logit'] for r in results):.3g})"
          + (f"; {len(bad)} cell(s) over the bound" if bad else ""))
    if a.json:
        print(json.dumps({"device": name, "dtype": str(dtype), "dims": dims, "compile": a.compile,
                          "rows_per_call": p["rows"], "max_events": p["max_events"], "repeats": p["repeats"],
                          "peak_tflops": a.peak_tflops if gpu else None, "user_state": states, "results": results}))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
