"""Throughput of the Spark worker functions alone (no Spark): Arrow in, model, Arrow out.

users/s through the user-stage worker, candidates/s through the score-stage worker, and
the same candidates through a per-candidate full forward of a rankmixer model of the same
size (what the naive predict_batch_udf job runs per batch), side by side in one process.

    python benchmarks/workers.py [--users 4096] [--candidates-per-user 100] [--large] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch
from split_vs_full import MIXER_ONLY  # noqa: E402  (benchmarks/ is the script's folder)

from jobs.score_stream import user_rows_batch
from jobs.workers import cached_model, encode_user_batches, score_user_rows
from ugsep.checkpoint import save_checkpoint
from ugsep.data.arrow_columns import field_columns, to_arrow_column
from ugsep.data.ranking_data import to_tensors
from ugsep.data.synthetic import generate_day, synthetic_spec
from ugsep.model import ModelConfig, RankingModel

LARGE = dict(d_model=768, n_user_tokens=8, n_group_tokens=8, n_layers=2, **MIXER_ONLY)
SMALL = dict(d_model=64, n_user_tokens=4, n_group_tokens=4, n_layers=2, **MIXER_ONLY)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--candidates-per-user", type=int, default=100)
    p.add_argument("--users-per-batch", type=int, default=256)
    p.add_argument("--large", action="store_true", help="D=768, 16 tokens (default on CUDA)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", action="store_true", help="print where the score worker spends its time")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dims = LARGE if (a.large or device == "cuda") else SMALL
    work = tempfile.mkdtemp()
    torch.manual_seed(0)
    for arch in ("ugsep", "rankmixer"):
        save_checkpoint(RankingModel(synthetic_spec(), ModelConfig(arch=arch, compensation=False, **dims)),
                        f"{work}/{arch}")

    day = generate_day(a.users, 5000, seed=3)
    rng = np.random.default_rng(0)
    n, per = a.users, a.candidates_per_user
    rows = rng.integers(0, len(day.items["item_id"]), n * per)
    items = {k: v[rows] for k, v in day.items.items()}
    items["recency"] = rng.exponential(24.0, n * per).astype(np.float32)
    user_cols = {k: to_arrow_column(v) for k, v in day.users.items()}
    user_batch = pa.RecordBatch.from_pydict(user_cols)
    ub = a.users_per_batch
    user_batches = [user_batch.slice(s, ub) for s in range(0, n, ub)]

    ugsep_model, _ = cached_model(f"{work}/ugsep", device)  # load outside the timed region
    states = list(encode_user_batches(user_batches[:1], f"{work}/ugsep", device))  # warm-up
    sync(device)
    t = time.perf_counter()
    states = list(encode_user_batches(user_batches, f"{work}/ugsep", device))
    sync(device)
    t_user = time.perf_counter() - t
    state_col = pa.concat_arrays([b.column("state") for b in states])

    counts = np.full(n, per)
    rows = user_rows_batch(day.users["user_id"], state_col, items, counts)
    group_batches = [rows.slice(s, ub * per) for s in range(0, n * per, ub * per)]  # ub users a batch
    list(score_user_rows(group_batches[:1], f"{work}/ugsep", device))
    sync(device)
    t = time.perf_counter()
    out_rows = sum(b.num_rows for b in score_user_rows(group_batches, f"{work}/ugsep", device))
    sync(device)
    t_score = time.perf_counter() - t
    assert out_rows == n * per

    # per-candidate full forward of rankmixer on per-candidate Arrow batches, decode/encode
    # included, the way predict_batch_udf runs it batch by batch
    full, _ = cached_model(f"{work}/rankmixer", device)
    cand_user = np.repeat(np.arange(n), per)
    cand_cols = {**{k: v[cand_user] for k, v in day.users.items()}, **items}
    per_batch = ub * per
    cand_batch = pa.RecordBatch.from_pydict({k: to_arrow_column(v) for k, v in cand_cols.items()})
    cand_batches = [cand_batch.slice(s, per_batch) for s in range(0, n * per, per_batch)]
    spec = full.spec

    def full_pass(batches: list[pa.RecordBatch]) -> None:
        for b in batches:
            cols = {name: b.column(name) for name in b.schema.names}
            users = to_tensors(field_columns(cols, spec.user_fields), device)
            its = to_tensors(field_columns(cols, spec.candidate_fields), device)
            with torch.inference_mode():
                logits = full(users, its, torch.arange(b.num_rows, device=device))
            pa.array(torch.sigmoid(logits.float()).cpu().numpy())

    full_pass(cand_batches[:1])
    sync(device)
    t = time.perf_counter()
    full_pass(cand_batches)
    sync(device)
    t_full = time.perf_counter() - t

    if a.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in score_user_rows(group_batches, f"{work}/ugsep", device):
            pass
        sync(device)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)

    res = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dims": dims,
        "users_per_s_user_worker": round(n / t_user, 1),
        "candidates_per_s_score_worker": round(n * per / t_score, 1),
        "candidates_per_s_two_stage_workers": round(n * per / (t_user + t_score), 1),
        "candidates_per_s_full_forward": round(n * per / t_full, 1),
        "speedup_vs_full": round(t_full / (t_user + t_score), 3),
        "state_width": ugsep_model.state_layout.width,
    }
    print(f"{res['device']} dims={dims}: user worker {res['users_per_s_user_worker']:,.0f} users/s; "
          f"score worker {res['candidates_per_s_score_worker']:,.0f} cand/s; both stages "
          f"{res['candidates_per_s_two_stage_workers']:,.0f} cand/s vs full forward "
          f"{res['candidates_per_s_full_forward']:,.0f} cand/s -> {res['speedup_vs_full']:.2f}x")
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
