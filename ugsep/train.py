"""Training and evaluation loops (CPU or GPU), independent of any data source."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ugsep.data.ranking_data import RankingData, batch_tensors, whole_user_cuts
from ugsep.features import FeatureSpec
from ugsep.metrics import auc, logloss, uauc
from ugsep.model import ModelConfig, RankingModel


@dataclass
class TrainConfig:
    epochs: int = 3  # MovieLens-100k and the default synthetic day converge in a few epochs
    batch_size: int = 512  # candidates per step
    lr: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_model(
    spec: FeatureSpec,
    cfg: ModelConfig,
    data: RankingData,
    tcfg: TrainConfig,
    device: torch.device | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> RankingModel:
    """Minibatch AdamW on BCE; ugsep trains through the split path (users encoded once per batch)."""
    device = device or default_device()
    torch.manual_seed(tcfg.seed)
    model = RankingModel(spec, cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    n_steps = -(-len(data) // tcfg.batch_size)
    for epoch in range(tcfg.epochs):
        model.train()
        perm, t0, total = rng.permutation(len(data)), time.perf_counter(), 0.0
        for step in range(n_steps):
            users, items, idx, y = batch_tensors(data, perm[step * tcfg.batch_size :][: tcfg.batch_size], device)
            loss = F.binary_cross_entropy_with_logits(model.score(users, items, idx), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        secs = time.perf_counter() - t0
        log(f"epoch {epoch + 1}/{tcfg.epochs}  loss {total / n_steps:.4f}  "
            f"{len(data) / secs:,.0f} candidates/s")
    return model.eval()


@torch.no_grad()
def predict(model: RankingModel, data: RankingData, max_rows: int = 8192) -> np.ndarray:
    """Logits for every candidate of ``data``, in order. Each model call takes whole users (at
    most ``max_rows`` candidates unless one user has more), so a user is encoded once."""
    device = next(model.parameters()).device
    order = np.argsort(data.user_row, kind="stable")
    out = np.zeros(len(data), dtype=np.float32)
    for begin, end in whole_user_cuts(data.user_row[order], max_rows):
        idx = order[begin:end]
        if len(idx):
            users, items, user_index, _ = batch_tensors(data, idx, device)
            out[idx] = model.score(users, items, user_index).float().cpu().numpy()
    return out


def evaluate(model: RankingModel, data: RankingData) -> dict[str, float]:
    logits = predict(model, data)
    return {
        "auc": auc(data.label, logits),
        "uauc": uauc(data.user_ids(), data.label, logits),
        "logloss": logloss(data.label, logits),
    }
