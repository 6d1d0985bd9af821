"""Split-score a whole day in one process: encode each user once, then score their group.

The in-memory twin of the Spark two-stage job, for the model-only demo and benchmarks.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from ugsep.data.ranking_data import RankingData, batch_tensors
from ugsep.data.synthetic import generate_day, join_day
from ugsep.host_memory import keep_freed_memory
from ugsep.model import RankingModel


@torch.no_grad()
def score_split(model: RankingModel, data: RankingData, batch_users: int = 256,
                progress: bool = False) -> np.ndarray:
    """Logits for every candidate, processing ``batch_users`` users (all their candidates) per call."""
    order = np.argsort(data.user_row, kind="stable")
    starts = np.searchsorted(data.user_row[order], np.arange(0, data.n_users + 1, batch_users))
    starts = np.r_[starts, len(order)] if starts[-1] != len(order) else starts
    out = np.empty(len(data), dtype=np.float32)
    device = next(model.parameters()).device
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        idx = order[a:b]
        if len(idx) == 0:
            continue
        users, items, uidx, _ = batch_tensors(data, idx, device)
        out[idx] = model.score(users, items, uidx).float().cpu().numpy()
        if progress:
            print(f"\rscored {b:,}/{len(order):,} candidates", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return out


def score_day_in_memory(model: RankingModel, n_users: int, seed: int, batch_users: int = 256) -> dict:
    """Generate a synthetic day, split-score it, return the job summary."""
    keep_freed_memory()
    day = generate_day(n_users=n_users, seed=seed)
    data = join_day(day.users, day.items, day.candidates, model.spec)
    t0 = time.perf_counter()
    logits = score_split(model, data, batch_users, progress=True)
    secs = time.perf_counter() - t0
    top = np.argsort(-logits[data.user_row == 0])[:5]
    return {
        "rows_in": len(data),
        "rows_out": int(np.isfinite(logits).sum()),
        "rows_quarantined": 0,
        "users": data.n_users,
        "seconds": round(secs, 3),
        "candidates_per_s": round(len(data) / secs, 1),
        "top_items_user0": data.items["item_id"][data.user_row == 0][top].tolist(),
    }
