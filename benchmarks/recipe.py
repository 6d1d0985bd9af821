"""The evidence for the training defaults: each variant of the default recipe on validation splits.

    python benchmarks/recipe.py --jobs 2                 # every variant, both datasets, seeds 0,1,2
    python benchmarks/recipe.py --variants default,no-fm --datasets movielens-100k --seeds 0

Each run trains ugsep with ``train_model`` (early stopping on each user's last 10% of the training
period) and records the kept point's validation log loss and AUC; the table prints their mean
over seeds per dataset, and the test AUC last (read once per run, never used to choose). The
MovieLens-format data is generated (``tests/movielens_fixture.write_movielens_like``) unless
``--data-dir`` points at real files. Runs are independent processes (``--jobs``), one torch
thread each, so the numbers do not depend on the parallelism.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# name -> (ModelConfig overrides, TrainConfig overrides), relative to the defaults
VARIANTS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "no-fm": ({"fm_dim": 0}, {}),
    "group-pool": ({"pool": "group"}, {}),
    "no-fm-group-pool-wd0.01": ({"fm_dim": 0, "pool": "group"}, {"weight_decay": 0.01}),
    "wd0.01": ({}, {"weight_decay": 0.01}),
    "fm32": ({"fm_dim": 32}, {}),
    "dropout0.1": ({"dropout": 0.1}, {}),
    "lr-decay0.7": ({}, {"lr_decay": 0.7}),
    "lr1e-3": ({}, {"lr": 1e-3}),
    "user-batches": ({}, {"batching": "users"}),
    "emb-lr5e-3": ({}, {"embedding_lr": 5e-3}),
    "emb-dims-by-cardinality": ({}, {}),  # the spec's embedding widths from each field's distinct ids
}


def dims_by_cardinality(spec, data):
    """The spec with each categorical/multi field's width = 6 * (distinct ids seen) ** 0.25, the
    rule of thumb for embedding sizes, rounded to a power of two in [4, 64]."""
    import dataclasses

    from ugsep.features import FieldKind

    def width(f):
        if f.kind == FieldKind.DENSE or f.shares:
            return f
        values = data.users.get(f.name, data.items.get(f.name))
        card = len(np.unique(values[values >= 0])) if values is not None else f.buckets
        return dataclasses.replace(f, dim=int(np.clip(2 ** round(np.log2(6 * max(card, 1) ** 0.25)), 4, 64)))

    return dataclasses.replace(spec, user_fields=tuple(map(width, spec.user_fields)),
                               item_fields=tuple(map(width, spec.item_fields)),
                               context_fields=tuple(map(width, spec.context_fields)))


def run_one(job: tuple[str, str, str | None, int]) -> dict:
    import torch

    from ugsep.config import ModelConfig, TrainConfig
    from ugsep.data.datasets import load_dataset
    from ugsep.train import evaluate, train_model

    variant, dataset, data_dir, seed = job
    torch.set_num_threads(1)
    model_kw, train_kw = VARIANTS[variant]
    spec, train, test = load_dataset(dataset, data_dir)
    if variant == "emb-dims-by-cardinality":
        spec = dims_by_cardinality(spec, train)
    tcfg = TrainConfig(seed=seed, **train_kw)
    result = train_model(spec, ModelConfig(**model_kw), train, tcfg, torch.device("cpu"), log=lambda s: None)
    return {"variant": variant, "dataset": dataset, "seed": seed, "epoch": result.best["epoch"],
            "val_logloss": result.best["val_logloss"], "val_auc": result.best["val_auc"],
            "test_auc": evaluate(result.model, test)["auc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--datasets", default="synthetic,movielens-100k")
    p.add_argument("--data-dir", help="MovieLens-100k format files (default: generate a MovieLens-like set)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    p.add_argument("--json", action="store_true", help="also print every run as a JSON line")
    a = p.parse_args()
    variants, datasets = a.variants.split(","), a.datasets.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = a.data_dir
        if data_dir is None and "movielens-100k" in datasets:
            from movielens_fixture import write_movielens_like

            data_dir = tmp
            write_movielens_like(Path(tmp))
        jobs = [(v, d, data_dir, int(s)) for s in a.seeds.split(",") for d in datasets for v in variants]
        with ProcessPoolExecutor(a.jobs) as pool:
            runs = []
            for r in pool.map(run_one, jobs):
                runs.append(r)
                print(f"{r['dataset']} {r['variant']} seed {r['seed']}: val logloss {r['val_logloss']:.4f}",
                      file=sys.stderr, flush=True)
                if a.json:
                    print(json.dumps(r), flush=True)
    for d in datasets:
        print(f"\n### {d} (mean over seeds {a.seeds})\n")
        print("| variant | val log loss | val AUC | epochs kept | test AUC |")
        print("| --- | --- | --- | --- | --- |")
        for v in variants:
            mine = [r for r in runs if r["variant"] == v and r["dataset"] == d]
            mean = lambda k: np.mean([r[k] for r in mine])  # noqa: E731, B023
            epochs = "/".join(f"{r['epoch']:g}" for r in mine)
            print(f"| {v} | {mean('val_logloss'):.4f} | {mean('val_auc'):.4f} | {epochs} | {mean('test_auc'):.4f} |")


if __name__ == "__main__":
    main()
