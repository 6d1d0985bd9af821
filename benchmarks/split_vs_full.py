"""Candidates scored per second: rankmixer full forward vs ugsep split (encode once + score groups).

Same width, depth and token counts; compensation off so the two models do the same math per
token. Both run in this process on the same data, and the script prints speed ratios next to
FLOPs ratios. On CUDA the models run in bf16. Rankmixer runs eager and under torch.compile
(default mode, compiled for each case's shapes); the split path is compared with the faster.

    python benchmarks/split_vs_full.py [--large] [--candidates 1,10,100,1000] [--no-compile] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ugsep.data.ranking_data import to_tensors
from ugsep.data.synthetic import generate_day, synthetic_spec
from ugsep.model import ModelConfig, RankingModel

# The token mixer alone: no FM term, group-token pooling (the speed numbers in docs/performance.md).
MIXER_ONLY = dict(pool="group", fm_dim=0)
SMALL = dict(d_model=128, n_user_tokens=8, n_group_tokens=8, n_layers=2, **MIXER_ONLY)
LARGE = dict(d_model=768, n_user_tokens=8, n_group_tokens=8, n_layers=2, **MIXER_ONLY)  # RankMixer-100M width


def make_inputs(n_users: int, per_user: int, device) -> tuple[dict, dict, torch.Tensor]:
    """Real synthetic feature rows, with exactly ``per_user`` candidates for each user."""
    day = generate_day(n_users=max(n_users, 2), n_items=max(per_user * 2, 100), seed=11)
    rng = np.random.default_rng(0)
    users = {k: v[:n_users] for k, v in day.users.items()}
    item_rows = rng.integers(0, len(day.items["item_id"]), n_users * per_user)
    items = {k: v[item_rows] for k, v in day.items.items()}
    items["recency"] = rng.exponential(24.0, len(item_rows)).astype(np.float32)
    idx = torch.arange(n_users).repeat_interleave(per_user)
    return to_tensors(users, device), to_tensors(items, device), idx.to(device)


def timed(fn, device, min_seconds: float) -> float:
    """Median seconds per call over repeated calls (after one warm-up)."""
    fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(times) < 3:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", action="store_true", help="D=768 (default on CUDA)")
    p.add_argument("--candidates", default="1,10,100,1000", help="candidates per user to test")
    p.add_argument("--rows", type=int, default=0, help="candidates per call (default 4096 CPU, 32768 GPU)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum timing window per case")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rankmixer baseline")
    p.add_argument("--json", action="store_true", help="end with one JSON line of results")
    a = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dims = LARGE if (a.large or device.type == "cuda") else SMALL
    rows = a.rows or (32768 if device.type == "cuda" else 4096)
    torch.manual_seed(0)
    spec = synthetic_spec()
    full = RankingModel(spec, ModelConfig(arch="rankmixer", compensation=False, **dims)).to(device, dtype).eval()
    split = RankingModel(spec, ModelConfig(arch="ugsep", compensation=False, **dims)).to(device, dtype).eval()
    split.load_state_dict(full.state_dict())
    print(f"device={device} dtype={dtype} dims={dims} rows/call={rows} split kernels={split.kernels.value}")
    print(f"{'cand/user':>9} {'rankmixer cand/s':>16} {'compiled cand/s':>15} {'split cand/s':>13} "
          f"{'vs eager':>8} {'vs compiled':>11} {'vs fastest':>10} {'flops ratio':>11}")
    results = []
    for n in [int(x) for x in a.candidates.split(",")]:
        users, items, idx = make_inputs(max(rows // n, 1), n, device)
        with torch.inference_mode():
            t_full = timed(lambda: full(users, items, idx), device, a.seconds)
            t_compiled = float("nan")
            if not a.no_compile:
                torch._dynamo.reset()  # compiled for this case's shapes (the warm-up call compiles)
                compiled = torch.compile(full, dynamic=False)
                t_compiled = timed(lambda: compiled(users, items, idx), device, a.seconds)
            t_split = timed(lambda: split.score_groups(split.encode_users(users), items, idx), device, a.seconds)
        ncand = len(idx)
        t_fastest = min(t_full, t_compiled) if not a.no_compile else t_full
        row = {
            "candidates_per_user": n,
            "full_cand_per_s": ncand / t_full,
            "full_compiled_cand_per_s": ncand / t_compiled if not a.no_compile else None,
            "split_cand_per_s": ncand / t_split,
            "speedup": t_full / t_split,
            "speedup_vs_compiled": t_compiled / t_split if not a.no_compile else None,
            "speedup_vs_fastest_rankmixer": t_fastest / t_split,
            "flops_ratio": full.flops_per_candidate(n) / split.flops_per_candidate(n),
        }
        results.append(row)
        compiled_s = f"{ncand / t_compiled:>15,.0f}" if not a.no_compile else f"{'-':>15}"
        vs_compiled = f"{row['speedup_vs_compiled']:>10.2f}x" if not a.no_compile else f"{'-':>11}"
        print(f"{n:>9} {row['full_cand_per_s']:>16,.0f} {compiled_s} {row['split_cand_per_s']:>13,.0f} "
              f"{row['speedup']:>7.2f}x {vs_compiled} {row['speedup_vs_fastest_rankmixer']:>9.2f}x "
              f"{row['flops_ratio']:>10.2f}x", flush=True)
    if a.json:
        print(json.dumps({"device": str(device), "dims": dims, "results": results}))


if __name__ == "__main__":
    main()
