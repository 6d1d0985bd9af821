"""Model commands (no Spark): train, eval, quantize, score-local."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cli.common import dataset_options, parent


def report(model, test, extra: dict) -> dict:
    """The JSON report of train and eval: quality on the test split, size and cost."""
    import numpy as np

    from ugsep.collective_kv import PoolTally
    from ugsep.features import PAD_ID
    from ugsep.train import evaluate

    cands_per_user = len(test) / max(len(np.unique(test.user_ids())), 1)
    tally = PoolTally(model.cfg.kv_pool_size) if model.state_layout.kv_user_dim else None  # CollectiveKV routing
    out = evaluate(model, test, on_state=tally)
    seq = model.spec.sequence_fields
    if seq:
        out["seq_len_mean"] = round(float((test.users[seq[0].name][test.user_row] != PAD_ID).sum(1).mean()), 2)
    layout = model.state_layout
    out["state_bytes_per_user"] = layout.bytes_per_user() if model.cfg.separated else None
    if layout.kv_user_dim:  # CollectiveKV: the K/V as stored (indices + user dims) vs the bf16 K/V they replace
        out["kv_bytes_per_user"] = layout.kv_bytes_per_user()
        out["state_bytes_per_user_uncompressed"] = layout.uncompressed_kv_bytes_per_user()
        out["kv_pool"] = tally.usage()
    out.update(
        params=model.num_params(),
        flops_per_candidate=round(model.flops_per_candidate(cands_per_user)),
        flops_per_candidate_at_1=round(model.flops_per_candidate(1.0)),
        candidates_per_user=round(cands_per_user, 2),
        arch=model.cfg.arch,
        compensation=model.cfg.uses_compensation,
        test_rows=len(test),
        **extra,
    )
    return out


def cmd_train(a: argparse.Namespace) -> int:
    """Train one model per seed (early stopping on the validation split), save each best checkpoint
    with its learning curves, and print a JSON report of the test split (mean and spread over seeds)."""
    from ugsep.data.datasets import load_dataset
    from ugsep.train import mean_and_spread

    t0 = time.perf_counter()
    sequences = a.arch == "hyformer" if a.sequences is None else a.sequences
    spec, train, test = load_dataset(a.dataset, a.data_dir, a.seed, sequences=sequences, seq_len=a.seq_len)
    seeds = a.seeds or [a.seed]
    print(f"training {a.arch} on {a.dataset}: {len(train):,} training rows ({train.n_users:,} users), "
          f"{len(test):,} test rows; seeds {seeds}", file=sys.stderr, flush=True)
    runs = []
    for seed in seeds:
        out = Path(a.out) if len(seeds) == 1 else Path(a.out) / f"seed-{seed}"
        runs.append(train_one(a, spec, train, test, seed, out))
    if len(seeds) == 1:
        print(json.dumps({**runs[0], "seconds": round(time.perf_counter() - t0, 1)}))
        return 0
    spread = {k: mean_and_spread([r[k] for r in runs]) for k in ("auc", "uauc", "logloss")}
    for k, v in spread.items():
        print(f"test {k}: {v['mean']:.4f} +- {v['std']:.4f} over {len(seeds)} seeds", file=sys.stderr)
    print(json.dumps({"seeds": seeds, "test": spread, "runs": runs, "checkpoints": [r["checkpoint"] for r in runs],
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def train_one(a: argparse.Namespace, spec, train, test, seed: int, out: Path) -> dict:
    """Train with ``seed``, save the best checkpoint, its report and learning curves in ``out``."""
    from ugsep.checkpoint import save_checkpoint
    from ugsep.model import ModelConfig
    from ugsep.train import TrainConfig, train_model

    cfg = ModelConfig(arch=a.arch, compensation=a.compensation, d_model=a.d_model, n_user_tokens=a.user_tokens,
                      n_group_tokens=a.group_tokens, n_layers=a.layers, dropout=a.dropout, fm_dim=a.fm_dim,
                      seq_encoder=a.seq_encoder, collective_kv=a.collective_kv, kv_pool_size=a.kv_pool_size,
                      kv_user_dim=a.kv_user_dim)
    tcfg = TrainConfig(max_epochs=a.max_epochs, patience=a.patience, monitor=a.monitor, val_share=a.val_share,
                       eval_every=a.eval_every, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                       batching=a.batching, seed=seed)
    result = train_model(spec, cfg, train, tcfg, state_path=out / STATE_FILE, resume=a.resume)
    extra = {"dataset": a.dataset, "data_dir": a.data_dir, "seed": a.seed, "train_seed": seed,
             "train_config": tcfg.to_dict()}
    version = save_checkpoint(result.model.cpu(), out, extra=extra)
    out_report = report(result.model, test, {"model_version": version, "checkpoint": str(out), "train_seed": seed,
                                             "training": result.summary()})
    (out / REPORT_FILE).write_text(json.dumps(out_report, indent=2))
    draw_curves(result.curve, result.best, out / CURVES_FILE, f"{a.arch} on {a.dataset}, seed {seed}")
    print(f"saved {out} (epoch {result.best['epoch']:g}); test auc {out_report['auc']:.4f}  "
          f"uauc {out_report['uauc']:.4f}  logloss {out_report['logloss']:.4f}", file=sys.stderr, flush=True)
    return out_report


STATE_FILE = "train_state.pt"  # the run's state after each evaluation, for --resume
REPORT_FILE = "train_report.json"
CURVES_FILE = "learning_curves.png"


def draw_curves(curve: list[dict], best: dict, path: Path, title: str) -> None:
    """Training loss and validation log loss (left), validation AUC and UAUC (right) per epoch,
    with the kept point marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = [c["epoch"] for c in curve]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, auc_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
    loss_ax.plot(x, [c["train_loss"] for c in curve], marker="o", label="train loss")
    loss_ax.plot(x, [c["val_logloss"] for c in curve], marker="o", label="validation log loss")
    auc_ax.plot(x, [c["val_auc"] for c in curve], marker="o", label="validation AUC")
    auc_ax.plot(x, [c["val_uauc"] for c in curve], marker="o", label="validation UAUC")
    for ax in (loss_ax, auc_ax):
        ax.axvline(best["epoch"], color="grey", linestyle="--", label=f"kept (epoch {best['epoch']:g})")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, format="png")


def cmd_eval(a: argparse.Namespace) -> int:
    from ugsep.checkpoint import load_checkpoint
    from ugsep.data.datasets import load_dataset

    model, version = load_checkpoint(a.ckpt)
    _, _, test = load_dataset(a.dataset, a.data_dir, a.seed, **sequence_options(model.spec))
    print(json.dumps(report(model, test, {"model_version": version})))
    return 0


def sequence_options(spec) -> dict:
    """load_dataset's arguments for the data a model reads: with its sequences, of its length."""
    from ugsep.data.datasets import SEQUENCE_LEN

    return {"sequences": bool(spec.sequence_fields), "seq_len": spec.sequence_len or SEQUENCE_LEN}


def quantize_checkpoint(ckpt: str, out: str, mode: str, dataset: str | None = None, data_dir: str | None = None,
                        calib_rows: int = 4096, group_size: int = 0, seed: int = 0) -> dict:
    """Quantize a checkpoint and save it with its lineage. FP8 calibration reads rows of the
    model's own data: ``dataset``/``data_dir``, by default those the checkpoint was trained on."""
    import torch

    from ugsep.checkpoint import load_checkpoint, read_config, save_checkpoint
    from ugsep.quant import QuantRecipe, calibrate_fp8, quantize_model

    meta = read_config(ckpt)
    if meta.get("quantization"):
        raise ValueError(f"{ckpt} is already quantized ({meta['quantization']['recipe']['mode']})")
    model, version = load_checkpoint(ckpt)
    recipe = QuantRecipe(mode=mode, group_size=group_size)
    if recipe.item_fp8:
        trained_on = meta.get("extra", {})
        users, items, idx = calibration_rows(model.spec, dataset or trained_on.get("dataset", "synthetic"),
                                             data_dir or trained_on.get("data_dir"), calib_rows, seed)
        recipe.float_layers = calibrate_fp8(model, recipe, users, items, idx)
    with torch.no_grad():
        quantize_model(model, recipe)
    new_version = save_checkpoint(model, out, quant={"recipe": recipe.to_dict(), "base_model_version": version})
    return {"model_version": new_version, "base_model_version": version, "recipe": recipe.to_dict()}


def calibration_rows(spec, dataset: str, data_dir: str | None, rows: int, seed: int):
    """(users, items, user_index) tensors of ``rows`` random training rows of a dataset, checked
    to hold every field the model reads."""
    import numpy as np

    from ugsep.data.datasets import load_dataset
    from ugsep.data.ranking_data import batch_tensors

    _, train, _ = load_dataset(dataset, data_dir, seed, **sequence_options(spec))
    missing = ([f.name for f in spec.user_fields if f.name not in train.users]
               + [f.name for f in spec.candidate_fields if f.name not in train.items])
    if missing:
        raise ValueError(f"FP8 calibration: dataset {dataset} has no fields {missing} that the model reads; "
                         "pass the data the model was trained on with --dataset/--data-dir")
    pick = np.random.default_rng(seed).permutation(len(train))[:rows]
    users, items, idx, _ = batch_tensors(train, pick)
    return users, items, idx


def cmd_quantize(a: argparse.Namespace) -> int:
    print(json.dumps(quantize_checkpoint(a.ckpt, a.out, a.mode, a.dataset, a.data_dir, a.calib_rows,
                                         a.group_size, a.seed)))
    return 0


def cmd_score_local(a: argparse.Namespace) -> int:
    """Generate a synthetic day and split-score it in this process: the model-only demo."""
    import numpy as np

    from ugsep.checkpoint import load_checkpoint
    from ugsep.data.synthetic import generate_day, join_day
    from ugsep.host_memory import keep_freed_memory
    from ugsep.train import predict

    model, version = load_checkpoint(a.ckpt)
    keep_freed_memory()
    day = generate_day(n_users=a.users, seed=a.seed)
    data = join_day(day.users, day.items, day.candidates, model.spec)
    t0 = time.perf_counter()
    logits = predict(model, data, max_rows=a.max_rows)
    secs = time.perf_counter() - t0
    top = np.argsort(-logits[data.user_row == 0])[:5]
    print(json.dumps({
        "rows_in": len(data), "rows_out": int(np.isfinite(logits).sum()), "users": data.n_users,
        "seconds": round(secs, 3), "candidates_per_s": round(len(data) / secs, 1),
        "top_items_user0": data.items["item_id"][data.user_row == 0][top].tolist(), "model_version": version,
    }))
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct seeds, e.g. 0,1,2")
    return seeds


def register(sub) -> None:
    from ugsep.config import ModelConfig, TrainConfig  # torch-free: defaults for the help

    model_defaults, train_defaults = ModelConfig(), TrainConfig()
    data = parent(dataset_options)
    t = sub.add_parser("train", parents=[data], help="train a model and save its best checkpoint",
                       description="Train rankmixer or ugsep. Each user's last --val-share of the training "
                                   "period is the validation split: evaluated every epoch, it picks the weights "
                                   "kept (early stopping). The test split is read only for the final report, "
                                   "the last stdout line (JSON). Writes the checkpoint, train_report.json, "
                                   "learning_curves.png and train_state.pt (for --resume) to --out.")
    t.add_argument("--out", required=True, help="checkpoint directory to write (with --seeds: one per seed)")
    m = t.add_argument_group("model")
    m.add_argument("--arch", choices=("rankmixer", "ugsep", "hyformer"), default="ugsep",
                   help="hyformer reads behaviour sequences; rankmixer and ugsep ignore them (default %(default)s)")
    m.add_argument("--compensation", action=argparse.BooleanOptionalAction, default=True,
                   help="information compensation for the masked user-item interaction (ugsep)")
    m.add_argument("--d-model", type=int, default=64)
    m.add_argument("--user-tokens", type=int, default=4)
    m.add_argument("--group-tokens", type=int, default=4)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--dropout", type=float, default=model_defaults.dropout,
                   help="dropout on the FFN and head hidden activations (default %(default)s)")
    m.add_argument("--seq-encoder", choices=("swiglu", "attention"), default=model_defaults.seq_encoder,
                   help="hyformer's sequence encoder: per-event SwiGLU or causal self-attention (default %(default)s)")
    m.add_argument("--sequences", action=argparse.BooleanOptionalAction, default=None,
                   help="load the dataset with behaviour sequences (default: only for hyformer)")
    m.add_argument("--seq-len", type=int, default=50, help="events kept per user history (default %(default)s)")
    m.add_argument("--collective-kv", action="store_true",
                   help="hyformer: keep sequence K/V as shared pool rows + a few user dims (CollectiveKV); the "
                        "report's kv_pool gives, per layer [K, V], the share of pool rows the test users' events "
                        "use and the share of events the 10 busiest rows take (a collapsed router uses few rows)")
    m.add_argument("--kv-pool-size", type=int, default=model_defaults.kv_pool_size,
                   help="CollectiveKV: rows of each K and V pool (default %(default)s)")
    m.add_argument("--kv-user-dim", type=int, default=model_defaults.kv_user_dim,
                   help="CollectiveKV: user-specific dims of each K and V (default %(default)s)")
    m.add_argument("--fm-dim", type=int, default=model_defaults.fm_dim,
                   help="factor width of the FM interaction between fields; 0: none (default %(default)s)")
    o = t.add_argument_group("training")
    o.add_argument("--max-epochs", "--epochs", type=int, default=train_defaults.max_epochs,
                   help="upper bound on epochs; early stopping usually ends sooner (default %(default)s)")
    o.add_argument("--patience", type=int, default=train_defaults.patience,
                   help="evaluations without improvement before stopping (default %(default)s)")
    o.add_argument("--monitor", choices=("logloss", "auc"), default=train_defaults.monitor,
                   help="validation metric that picks the kept weights (default %(default)s)")
    o.add_argument("--val-share", type=float, default=train_defaults.val_share,
                   help="each user's last share of training rows, by time, used for validation (default %(default)s)")
    o.add_argument("--eval-every", type=int, default=0,
                   help="also evaluate every N steps inside an epoch (default: at epoch ends only)")
    o.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
    o.add_argument("--batching", choices=("rows", "users"), default=train_defaults.batching,
                   help="rows: shuffled candidates (default: the better validation log loss for every arch); "
                        "users: whole users per step, each user's side encoded once (faster under hyformer)")
    o.add_argument("--lr", type=float, default=train_defaults.lr, help="peak learning rate (default %(default)s)")
    o.add_argument("--weight-decay", type=float, default=train_defaults.weight_decay,
                   help="decoupled weight decay of the weight matrices (default %(default)s)")
    o.add_argument("--seeds", type=_seed_list, metavar="S,S,...",
                   help="train once per seed (checkpoints in --out/seed-S) and report mean and spread")
    o.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from --out/train_state.pt (same settings and data)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", parents=[data], help="evaluate a checkpoint on a dataset's test split",
                       description="Print the same JSON report as train for a saved checkpoint "
                                   "(--seed must match training).")
    e.add_argument("--ckpt", required=True)
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("quantize", help="write a quantized checkpoint (W8A16 user side, FP8 item side)",
                       description="Quantize a checkpoint: int8 weights with 16-bit activations for the user "
                                   "side, FP8 E4M3 for the item side. FP8 calibration reads rows of the model's "
                                   "own data (by default the dataset it was trained on); layers whose FP8 "
                                   "error is too large stay float.")
    q.add_argument("--ckpt", required=True)
    q.add_argument("--mode", choices=("w8a16", "fp8", "w8a16+fp8"), default="w8a16+fp8")
    q.add_argument("--dataset", choices=("synthetic", "movielens-100k"),
                   help="calibration data (default: the dataset the checkpoint was trained on)")
    q.add_argument("--data-dir", help="folder of the MovieLens-format files (default: the training one)")
    q.add_argument("--seed", type=int, default=0, help="dataset seed and row sample")
    q.add_argument("--calib-rows", type=int, default=4096, help="rows used to pick FP8-sensitive layers")
    q.add_argument("--group-size", type=int, default=0, help="W8A16 scale groups along the input (0: per channel)")
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_quantize)

    s = sub.add_parser("score-local", help="split-score a synthetic day in memory (no Spark)",
                       description="Generate a synthetic day, encode each user once, score all "
                                   "candidates, print a JSON summary.")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--users", type=int, default=2000)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--max-rows", type=int, default=8192, help="candidates per model call (whole users)")
    s.set_defaults(func=cmd_score_local)
