"""Model commands (no Spark): train, eval, quantize, score-local."""

from __future__ import annotations

import argparse
import json
import sys
import time

from cli.common import dataset_options, parent


def report(model, test, extra: dict) -> dict:
    """The JSON report of train and eval: quality on the test split, size and cost."""
    from ugsep.train import evaluate

    cands_per_user = len(test) / max(test.n_users, 1)
    out = evaluate(model, test)
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
    from ugsep.checkpoint import save_checkpoint
    from ugsep.data.datasets import load_dataset
    from ugsep.model import ModelConfig
    from ugsep.train import TrainConfig, train_model

    t0 = time.perf_counter()
    spec, train, test = load_dataset(a.dataset, a.data_dir, a.seed)
    cfg = ModelConfig(arch=a.arch, compensation=a.compensation, d_model=a.d_model,
                      n_user_tokens=a.user_tokens, n_group_tokens=a.group_tokens, n_layers=a.layers)
    print(f"training {a.arch} on {a.dataset}: {len(train):,} train / {len(test):,} test rows, "
          f"{train.n_users:,} users", file=sys.stderr, flush=True)
    model = train_model(spec, cfg, train, TrainConfig(epochs=a.epochs, seed=a.seed, batch_size=a.batch_size))
    extra = {"dataset": a.dataset, "data_dir": a.data_dir, "seed": a.seed}
    version = save_checkpoint(model.cpu(), a.out, extra=extra)
    print(json.dumps(report(model, test, {"model_version": version, "seconds": round(time.perf_counter() - t0, 1)})))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from ugsep.checkpoint import load_checkpoint
    from ugsep.data.datasets import load_dataset

    model, version = load_checkpoint(a.ckpt)
    _, _, test = load_dataset(a.dataset, a.data_dir, a.seed)
    print(json.dumps(report(model, test, {"model_version": version})))
    return 0


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

    _, train, _ = load_dataset(dataset, data_dir, seed)
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


def register(sub) -> None:
    data = parent(dataset_options)
    t = sub.add_parser("train", parents=[data], help="train a model and save a checkpoint",
                       description="Train rankmixer or ugsep; the last stdout line is a JSON report.")
    t.add_argument("--arch", choices=("rankmixer", "ugsep"), default="ugsep")
    t.add_argument("--compensation", action=argparse.BooleanOptionalAction, default=True,
                   help="information compensation for the masked user-item interaction (ugsep)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=512)
    t.add_argument("--d-model", type=int, default=64)
    t.add_argument("--user-tokens", type=int, default=4)
    t.add_argument("--group-tokens", type=int, default=4)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--out", required=True, help="checkpoint directory to write")
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
