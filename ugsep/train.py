"""Training and evaluation (CPU or GPU), independent of any data source.

``fit`` trains any model with ``score(users, items, user_index) -> logits`` and picks its best
point on a validation split: it evaluates AUC, UAUC and log loss there after every epoch (and
every ``eval_every`` steps), keeps the weights of the best evaluation by ``monitor``, stops after
``patience`` evaluations without improvement, and returns the best weights with the whole curve.
``train_model`` builds a ``RankingModel`` and carves the validation split from the training data
by time (each user's last ``val_share``), so no test row is ever read while training.

The defaults are the recipe, chosen on validation splits only (``benchmarks/quality.py`` runs the
comparison; ``docs/performance.md`` has the numbers); each default says why beside it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ugsep.collective_kv import CollectiveKV
from ugsep.config import ModelConfig, TrainConfig
from ugsep.data.ranking_data import RankingData, batch_tensors, split_last_share, whole_user_cuts
from ugsep.features import FeatureSpec
from ugsep.metrics import auc, logloss, uauc
from ugsep.model import RankingModel
from ugsep.state import UserState

MIN_VAL_ROWS = 20  # fewer validation rows cannot rank epochs: refuse rather than pick by noise
PROGRESS_SECONDS = 10.0  # a progress line at least this often during an epoch


class ValidationSplitError(ValueError):
    """The training data is too small (or one-sided) for a validation split."""


@dataclass
class TrainResult:
    """The model at its best validation point (eval mode) and how training got there."""

    model: nn.Module
    best: dict[str, Any]  # the curve entry of the kept weights
    curve: list[dict[str, Any]]  # one entry per evaluation: epoch, step, train_loss, val_* metrics
    stopped: str  # why training ended
    train_rows: int
    val_rows: int

    def summary(self) -> dict[str, Any]:
        """The training part of a JSON report."""
        return {"best_epoch": self.best["epoch"], "best_step": self.best["step"], "stopped": self.stopped,
                "train_rows": self.train_rows, "val_rows": self.val_rows,
                "val": {k.removeprefix("val_"): v for k, v in self.best.items() if k.startswith("val_")},
                "curve": self.curve}


@dataclass
class _Run:
    """Where a run is; saved at every evaluation so ``resume`` continues from there."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches of the current epoch finished
    step: int = 0  # optimizer steps in all
    bad_evals: int = 0  # evaluations since the last improvement
    best: dict[str, Any] | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # training loss since the last evaluation
    loss_steps: int = 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _stderr(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def train_model(
    spec: FeatureSpec,
    cfg: ModelConfig,
    data: RankingData,
    tcfg: TrainConfig,
    device: torch.device | None = None,
    log: Callable[[str], None] = _stderr,
    state_path: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Build a RankingModel and ``fit`` it, validating on each user's last ``tcfg.val_share`` of
    ``data`` by time. ugsep trains through the split path (users encoded once per batch)."""
    train, val = split_last_share(data, tcfg.val_share, tcfg.seed)
    torch.manual_seed(tcfg.seed)
    model = RankingModel(spec, cfg)
    return fit(model, train, val, tcfg, device, log, state_path, resume)


def check_validation_split(val: RankingData, train_rows: int, share: float) -> None:
    """Refuse a validation split that cannot rank epochs, saying how big it is and what to change."""
    pos = int(val.label.sum())
    if len(val) < MIN_VAL_ROWS or pos == 0 or pos == len(val):
        raise ValidationSplitError(
            f"the validation split (each user's last {share:.0%} of {train_rows + len(val):,} training rows) "
            f"has {len(val)} rows, {pos} positive: it needs at least {MIN_VAL_ROWS} rows with both labels "
            "to choose an epoch; train on more data or raise --val-share")


def fit(
    model: nn.Module,
    train: RankingData,
    val: RankingData,
    tcfg: TrainConfig,
    device: torch.device | None = None,
    log: Callable[[str], None] = _stderr,
    state_path: str | Path | None = None,
    resume: bool = False,
    after_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Minibatch BCE training with early stopping on ``val``; returns the best weights.

    ``state_path``: where the run's state (weights, optimizer, position, best weights, curve, RNG)
    is written after every evaluation; with ``resume`` training continues from it, to the same
    result as a run never interrupted. ``after_eval`` is called with each curve entry.
    """
    check_validation_split(val, len(train), tcfg.val_share)
    device = device or default_device()
    with _deterministic_on_cpu(device):
        return _fit(model, train, val, tcfg, device, log, state_path, resume, after_eval)


@contextmanager
def _deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """On the CPU, the same seed gives the same model in any process: torch's deterministic
    algorithms (multi-threaded gradient accumulation otherwise sums in varying orders). The
    previous setting is restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(before or device.type == "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _fit(model: nn.Module, train: RankingData, val: RankingData, tcfg: TrainConfig, device: torch.device,
         log: Callable[[str], None], state_path: str | Path | None, resume: bool,
         after_eval: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    model.to(device)
    opt = _optimizer(model, tcfg)
    run, best_weights = _Run(), None
    if resume:
        run, best_weights = _load_state(state_path, model, opt, tcfg, len(train), len(val))
        log(f"resuming {state_path} at epoch {run.epoch + 1}, step {run.step}")
    else:
        torch.manual_seed(tcfg.seed)  # dropout draws the same masks for a given seed
    steps_per_epoch = -(-len(train) // tcfg.batch_size)  # nominal: the schedule's unit (user batches vary)

    def evaluate_now() -> bool:
        """Evaluate, keep the best, save the state; True when training should stop."""
        nonlocal best_weights
        metrics = evaluate(model, val)
        entry = {"epoch": run.epoch + run.batch / len(batches), "step": run.step,
                 "train_loss": run.loss_sum / max(run.loss_steps, 1),
                 "lr": opt.param_groups[0]["lr"], **{f"val_{k}": v for k, v in metrics.items()}}
        entry["epoch"] = round(entry["epoch"], 3)
        run.curve.append(entry)
        run.loss_sum, run.loss_steps = 0.0, 0
        if _better(entry, run.best, tcfg.monitor):
            run.best, run.bad_evals = entry, 0
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            verdict = "best so far, kept"
        else:
            run.bad_evals += 1
            verdict = f"no better than epoch {run.best['epoch']:g} for {run.bad_evals}/{tcfg.patience}"
        log(f"validation at epoch {entry['epoch']:g}: logloss {metrics['logloss']:.4f}  auc {metrics['auc']:.4f}  "
            f"uauc {metrics['uauc']:.4f}  ({verdict})")
        model.train()
        if state_path:
            _save_state(state_path, model, opt, run, best_weights, tcfg, len(train), len(val))
        if after_eval:
            after_eval(entry)
        return run.bad_evals >= tcfg.patience

    stopped = f"max epochs ({tcfg.max_epochs})"
    done = run.bad_evals >= tcfg.patience and run.best is not None
    if done:
        stopped = "early stopping"
    model.train()
    while not done and run.epoch < tcfg.max_epochs:
        batches = epoch_batches(train, tcfg, run.epoch)
        t0, shown, rows = time.perf_counter(), time.perf_counter(), 0
        while run.batch < len(batches) and not done:
            idx = batches[run.batch]
            loss = _step(model, opt, train, idx, tcfg, run.step, steps_per_epoch, device)
            run.batch, run.step, rows = run.batch + 1, run.step + 1, rows + len(idx)
            run.loss_sum, run.loss_steps = run.loss_sum + loss, run.loss_steps + 1
            now = time.perf_counter()
            if now - shown > PROGRESS_SECONDS:
                shown, speed = now, rows / (now - t0)
                eta = (len(train) - rows) / speed
                log(f"epoch {run.epoch + 1}/{tcfg.max_epochs}  step {run.batch}/{len(batches)}  "
                    f"loss {run.loss_sum / run.loss_steps:.4f}  {speed:,.0f} ex/s  epoch ETA {eta:.0f} s")
            if tcfg.eval_every and run.step % tcfg.eval_every == 0 and run.batch < len(batches):
                done = evaluate_now()
        if done:
            stopped = "early stopping"
            break
        secs = time.perf_counter() - t0
        log(f"epoch {run.epoch + 1}/{tcfg.max_epochs}  loss {run.loss_sum / max(run.loss_steps, 1):.4f}  "
            f"{rows / max(secs, 1e-9):,.0f} ex/s  {secs:.1f} s")
        run.epoch, run.batch = run.epoch + 1, 0
        if evaluate_now():
            stopped, done = "early stopping", True
    model.load_state_dict(best_weights)
    log(f"stopped by {stopped}; keeping the weights of epoch {run.best['epoch']:g} (step {run.best['step']}): "
        f"validation {tcfg.monitor} {run.best['val_' + tcfg.monitor]:.4f}")
    return TrainResult(model.eval(), run.best, run.curve, stopped, len(train), len(val))


def epoch_batches(data: RankingData, tcfg: TrainConfig, epoch: int) -> list[np.ndarray]:
    """The candidates of each step of ``epoch``, from (seed, epoch) alone so a resumed run sees the
    same batches. ``rows``: a shuffle of all candidates cut every ``batch_size``. ``users``: the
    users shuffled, then whole users per batch (about ``batch_size`` candidates; a bigger user
    alone), so a user's side is encoded once per batch, as UG-Sep's training aggregates samples."""
    rng = np.random.default_rng([tcfg.seed, epoch])
    if tcfg.batching == "rows":
        perm = rng.permutation(len(data))
        return [perm[i : i + tcfg.batch_size] for i in range(0, len(data), tcfg.batch_size)]
    user_rank = rng.permutation(data.n_users)[data.user_row]  # each candidate's user's place in the shuffle
    order = np.argsort(user_rank, kind="stable")
    return [order[a:b] for a, b in whole_user_cuts(user_rank[order], tcfg.batch_size)]


def _better(entry: dict[str, Any], best: dict[str, Any] | None, monitor: str) -> bool:
    if best is None:
        return True
    key = f"val_{monitor}"
    return entry[key] < best[key] if monitor == "logloss" else entry[key] > best[key]


def _step(model: nn.Module, opt: torch.optim.Optimizer, data: RankingData, idx: np.ndarray, tcfg: TrainConfig,
          step: int, steps_per_epoch: int, device: torch.device) -> float:
    """One optimizer step on candidates ``idx`` at the schedule's learning rate for ``step``."""
    scale = min(1.0, (step + 1) / tcfg.warmup_steps) if tcfg.warmup_steps else 1.0
    scale *= tcfg.lr_decay ** (step / steps_per_epoch)
    for g in opt.param_groups:
        g["lr"] = g["peak_lr"] * scale
    users, items, user_index, y = batch_tensors(data, idx, device)
    loss = F.binary_cross_entropy_with_logits(model.score(users, items, user_index), y)
    aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else 0.0  # CollectiveKV's routing losses
    opt.zero_grad(set_to_none=True)
    (loss + tcfg.aux_loss_weight * aux).backward()
    if tcfg.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    opt.step()
    return loss.item()


def param_groups(model: nn.Module, tcfg: TrainConfig) -> list[dict[str, Any]]:
    """Embedding tables, weight matrices, and the rest (biases, norms): decay only where it
    regularises a map; embeddings get their own rate and decay. CollectiveKV's pools are tables
    too (rows looked up by index, most of them untouched by any one batch)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    tables |= {id(m.pool) for m in model.modules() if isinstance(m, CollectiveKV)}
    groups: dict[str, list[nn.Parameter]] = {"embedding": [], "matrix": [], "other": []}
    for name, p in model.named_parameters():
        kind = "embedding" if id(p) in tables else "other" if p.ndim < 2 or name.endswith("bias") else "matrix"
        groups[kind].append(p)
    settings = {"embedding": (tcfg.embedding_lr or tcfg.lr, tcfg.embedding_decay),
                "matrix": (tcfg.lr, tcfg.weight_decay), "other": (tcfg.lr, 0.0)}
    return [{"params": ps, "peak_lr": settings[k][0], "lr": settings[k][0], "weight_decay": settings[k][1], "name": k}
            for k, ps in groups.items() if ps]


def _optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, tcfg), lr=tcfg.lr)


# --- resumable state: torch.save of tensors and plain values, read back with weights_only ---
def _signature(tcfg: TrainConfig, train_rows: int, val_rows: int) -> dict[str, Any]:
    """What must match for a resumed run to continue the same run (max_epochs and patience may change)."""
    d = {k: v for k, v in tcfg.to_dict().items() if k not in ("max_epochs", "patience")}
    return {**d, "train_rows": train_rows, "val_rows": val_rows}


def _save_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, run: _Run,
                best_weights: dict[str, torch.Tensor], tcfg: TrainConfig, train_rows: int, val_rows: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "run": asdict(run),
                "best_weights": best_weights, "torch_rng": torch.get_rng_state(),
                "signature": _signature(tcfg, train_rows, val_rows)}, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous state whole


def _load_state(path: str | Path | None, model: nn.Module, opt: torch.optim.Optimizer, tcfg: TrainConfig,
                train_rows: int, val_rows: int) -> tuple[_Run, dict[str, torch.Tensor]]:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"cannot resume: no training state at {path} (it is written after each evaluation)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    want = _signature(tcfg, train_rows, val_rows)
    changed = {k: (state["signature"].get(k), v) for k, v in want.items() if state["signature"].get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"cannot resume {path}: the run was started with other settings or data ({detail})")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return _Run(**state["run"]), state["best_weights"]


@torch.no_grad()
def predict(model: nn.Module, data: RankingData, max_rows: int = 8192,
            on_state: Callable[[UserState], None] | None = None) -> np.ndarray:
    """Logits for every candidate of ``data``, in order. Each model call takes whole users (at
    most ``max_rows`` candidates unless one user has more), so a user is encoded once.
    ``on_state``: called with each call's user state (models with the UG-Sep split)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(data.user_row, kind="stable")
    out = np.zeros(len(data), dtype=np.float32)
    for begin, end in whole_user_cuts(data.user_row[order], max_rows):
        idx = order[begin:end]
        if len(idx):
            users, items, user_index, _ = batch_tensors(data, idx, device)
            kw = {"on_state": on_state} if on_state is not None else {}  # other models' score (DeepFM) has none
            out[idx] = model.score(users, items, user_index, **kw).float().cpu().numpy()
    model.train(was_training)
    return out


def evaluate(model: nn.Module, data: RankingData,
             on_state: Callable[[UserState], None] | None = None) -> dict[str, float]:
    logits = predict(model, data, on_state=on_state)
    return {
        "auc": auc(data.label, logits),
        "uauc": uauc(data.user_ids(), data.label, logits),
        "logloss": logloss(data.label, logits),
    }


def mean_and_spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value), for results over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}

