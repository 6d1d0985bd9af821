"""Quality against the classic CTR baseline: DeepFM vs rankmixer vs ugsep on the same splits.

    python benchmarks/quality.py                       # synthetic + a generated MovieLens-format set
    python benchmarks/quality.py --data-dir ml-100k    # your MovieLens-format files instead

Every model trains with early stopping on the same validation split (each user's last 10% of
the training period) under the same epoch budget; the test split is read once, for the table.
ugsep and rankmixer train with the library's default recipe (``TrainConfig()``, ``ModelConfig``
defaults). DeepFM (``benchmarks/baselines.py``) trains twice: with DeepCTR-Torch's defaults
(Adam, lr 1e-3, batch 256) and with ugsep's recipe; the table shows both and names the one its
validation log loss prefers. Mean and sample standard deviation over the seeds; the last column
is each model's test AUC minus DeepFM's (the validation-preferred recipe), seed by seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from baselines import DeepFM  # noqa: E402
from movielens_fixture import write_movielens_like  # noqa: E402

from ugsep.config import ModelConfig, TrainConfig  # noqa: E402
from ugsep.data.datasets import load_dataset  # noqa: E402
from ugsep.data.ranking_data import split_last_share  # noqa: E402
from ugsep.model import RankingModel  # noqa: E402
from ugsep.train import evaluate, fit  # noqa: E402

DEEPCTR_RECIPE = dict(lr=1e-3, batch_size=256, weight_decay=0.0, warmup_steps=0, grad_clip=0.0)


def candidates(spec):
    """(row name, model builder, recipe overrides) for every row of the table."""
    return [
        ("deepfm (DeepCTR defaults)", lambda: DeepFM(spec), DEEPCTR_RECIPE),
        ("deepfm (ugsep recipe)", lambda: DeepFM(spec), {}),
        ("rankmixer", lambda: RankingModel(spec, ModelConfig(arch="rankmixer")), {}),
        ("ugsep", lambda: RankingModel(spec, ModelConfig(arch="ugsep")), {}),
    ]


def run(name: str, data_dir: str | None, seeds: list[int], max_epochs: int, log) -> list[dict]:
    spec, train, test = load_dataset(name, data_dir)
    rows = []
    for label, build, recipe in candidates(spec):
        runs = []
        for seed in seeds:
            tcfg = TrainConfig(max_epochs=max_epochs, seed=seed, **recipe)
            fit_rows, val = split_last_share(train, tcfg.val_share, seed)
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            result = fit(build(), fit_rows, val, tcfg, torch.device("cpu"), log=lambda s: None)
            runs.append({"seed": seed, "epoch": result.best["epoch"], "val_logloss": result.best["val_logloss"],
                         "seconds": time.perf_counter() - t0, **evaluate(result.model, test)})
            log(f"{name}: {label} seed {seed}: epoch {runs[-1]['epoch']:g}, val logloss "
                f"{runs[-1]['val_logloss']:.4f}, test auc {runs[-1]['auc']:.4f} ({runs[-1]['seconds']:.0f} s)")
        rows.append({"model": label, "runs": runs})
    deepfm = min(rows[:2], key=lambda r: np.mean([x["val_logloss"] for x in r["runs"]]))
    deepfm["model"] += " *"
    for r in rows:
        r["vs_deepfm"] = [a["auc"] - b["auc"] for a, b in zip(r["runs"], deepfm["runs"], strict=True)]
    return rows


def table(name: str, rows: list[dict], seeds: list[int]) -> str:
    def ms(values) -> str:
        v = np.asarray(values, dtype=np.float64)
        return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"

    out = [f"### {name} ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
           "| model | val log loss | test AUC | test UAUC | test log loss | epochs kept | AUC vs DeepFM |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        col = lambda k: [x[k] for x in r["runs"]]  # noqa: E731
        out.append(f"| {r['model']} | {ms(col('val_logloss'))} | {ms(col('auc'))} | {ms(col('uauc'))} | "
                   f"{ms(col('logloss'))} | {'/'.join(f'{e:g}' for e in col('epoch'))} | "
                   f"{np.mean(r['vs_deepfm']):+.4f} |")
    out += ["", "\\* the DeepFM recipe its validation log loss prefers; the last column compares with it."]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="MovieLens-100k format files (default: generate a MovieLens-like set)")
    p.add_argument("--datasets", default="synthetic,movielens-100k", help="comma-separated (default: both)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=TrainConfig().max_epochs)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, where = a.data_dir, a.data_dir
        if data_dir is None:
            data_dir, where = tmp, "generated by tests/movielens_fixture.write_movielens_like(seed=0)"
            write_movielens_like(Path(tmp))
        for name in a.datasets.split(","):
            rows = run(name, data_dir, seeds, a.max_epochs, log)
            print(table(f"{name}" + (f" ({where})" if name != "synthetic" else ""), rows, seeds) + "\n", flush=True)


if __name__ == "__main__":
    main()
