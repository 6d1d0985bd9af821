"""Quality against the classic CTR baseline: DeepFM vs rankmixer, ugsep and hyformer on the same splits.

    python benchmarks/quality.py --jobs 2              # synthetic + a generated MovieLens-format set
    python benchmarks/quality.py --data-dir ml-100k    # your MovieLens-format files instead
    python benchmarks/quality.py --datasets synthetic+seq,movielens-100k+seq   # with hyformer
    python benchmarks/quality.py ... --runs-file runs.jsonl   # keep each run; a rerun trains only the missing ones

Every model trains with early stopping on the same validation split (each user's last 10% of
the training period) under the same epoch budget; the test split is read once, for the table.
ugsep and rankmixer train with the library's default recipe (``TrainConfig()``, ``ModelConfig``
defaults). A dataset named with "+seq" carries behaviour sequences: hyformer reads them (row
batches, as every model); the other models ignore them, and on synthetic+seq, whose label depends on
the sequence, show what is lost without. DeepFM (``benchmarks/baselines.py``) trains twice: with
DeepCTR-Torch's defaults (Adam, lr 1e-3, batch 256) and with ugsep's recipe; the table shows both
and names the one its validation log loss prefers. Mean and sample standard deviation over the seeds; the last column
is each model's test AUC minus DeepFM's (the validation-preferred recipe), seed by seed.

Each row also gives the model's parameters (embedding tables included) and its matmul FLOPs per scored
candidate at inference (``RankingModel.flops_per_candidate``): under the UG-Sep split (ugsep, hyformer) the
user side (user tokens, and under hyformer the sequence encoding, K/V and user queries) runs once per user and
is divided over the user's candidates, here the test split's mean candidates per user; rankmixer and DeepFM
compute everything per candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from baselines import DeepFM  # noqa: E402
from movielens_fixture import write_movielens_like  # noqa: E402

from ugsep.collective_kv import PoolTally  # noqa: E402
from ugsep.config import ModelConfig, TrainConfig  # noqa: E402
from ugsep.data.datasets import load_dataset  # noqa: E402
from ugsep.data.ranking_data import split_last_share  # noqa: E402
from ugsep.model import RankingModel  # noqa: E402
from ugsep.train import evaluate, fit  # noqa: E402

DEEPCTR_RECIPE = dict(lr=1e-3, batch_size=256, weight_decay=0.0, warmup_steps=0, grad_clip=0.0)
ROWS = {  # row name -> (model, recipe overrides, model config overrides); ugsep's recipe is TrainConfig()'s
    "deepfm (DeepCTR defaults)": ("deepfm", DEEPCTR_RECIPE, {}),
    "deepfm (ugsep recipe)": ("deepfm", {}, {}),
    "rankmixer": ("rankmixer", {}, {}),
    "ugsep": ("ugsep", {}, {}),
    "hyformer": ("hyformer", {}, {}),  # sequence datasets only; reads the histories
    "hyformer+ckv": ("hyformer", {}, {"collective_kv": True}),  # the same with CollectiveKV state (config defaults)
    # CollectiveKV's pool rows and user dims spelled out, for comparing sizes (pools up to 32,767 rows keep
    # int16 indices; 8 user dims keep the state over 50x smaller than plain bf16 K/V at D=512)
    "hyformer+ckv p10k d4": ("hyformer", {}, {"collective_kv": True, "kv_pool_size": 10_000, "kv_user_dim": 4}),
    "hyformer+ckv p30k d4": ("hyformer", {}, {"collective_kv": True, "kv_pool_size": 30_000, "kv_user_dim": 4}),
    "hyformer+ckv p10k d8": ("hyformer", {}, {"collective_kv": True, "kv_pool_size": 10_000, "kv_user_dim": 8}),
    "hyformer+ckv p30k d8": ("hyformer", {}, {"collective_kv": True, "kv_pool_size": 30_000, "kv_user_dim": 8}),
}


def dataset_args(name: str) -> tuple[str, bool]:
    """'movielens-100k+seq' -> ('movielens-100k', True): the dataset with behaviour sequences."""
    return name.removesuffix("+seq"), name.endswith("+seq")


def run_one(job: tuple[str, str, str | None, int, int, str]) -> dict:
    """Train one row's model with one seed (its own process, one torch thread on the CPU),
    evaluate the test split."""
    row, dataset, data_dir, seed, max_epochs, device = job
    torch.set_num_threads(1)
    name, sequences = dataset_args(dataset)
    spec, train, test = load_dataset(name, data_dir, sequences=sequences)
    kind, recipe, overrides = ROWS[row]
    tcfg = TrainConfig(max_epochs=max_epochs, seed=seed, **recipe)
    fit_rows, val = split_last_share(train, tcfg.val_share, seed)
    torch.manual_seed(seed)
    model = DeepFM(spec) if kind == "deepfm" else RankingModel(spec, ModelConfig(arch=kind, **overrides))
    t0 = time.perf_counter()
    result = fit(model, fit_rows, val, tcfg, torch.device(device), log=lambda s: None)
    per_user = len(test) / len(np.unique(test.user_ids()))  # the test split's mean candidates per user
    tally = PoolTally(model.cfg.kv_pool_size) if kind != "deepfm" and model.cfg.collective_kv else None
    metrics = evaluate(result.model, test, on_state=tally)
    return {"row": row, "dataset": dataset, "seed": seed, "max_epochs": max_epochs, "epoch": result.best["epoch"],
            "val_logloss": result.best["val_logloss"], "seconds": time.perf_counter() - t0,
            "params": sum(p.numel() for p in model.parameters()), "flops": flops_per_candidate(model, per_user),
            "candidates_per_user": per_user, **metrics, "kv_pool": tally.usage() if tally else None}


def flops_per_candidate(model: nn.Module, candidates_per_user: float) -> float:
    """Matmul FLOPs per scored candidate at inference: ``RankingModel.flops_per_candidate`` (the user
    side divided over the user's candidates under the split); DeepFM's linear layers, per candidate."""
    if isinstance(model, RankingModel):
        return model.flops_per_candidate(candidates_per_user)
    return float(2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)))


def collect(dataset: str, runs: list[dict]) -> list[dict]:
    """Table rows of one dataset, each with its runs by seed and its AUC minus DeepFM's."""
    rows = []
    for row in ROWS:
        mine = sorted((r for r in runs if r["row"] == row and r["dataset"] == dataset), key=lambda r: r["seed"])
        if mine:
            rows.append({"model": row, "runs": mine})
    deepfms = [r for r in rows if r["model"].startswith("deepfm")]
    deepfm = min(deepfms, key=lambda r: np.mean([x["val_logloss"] for x in r["runs"]])) if deepfms else None
    if deepfm is not None:
        deepfm["model"] += " *"
    base = {x["seed"]: x["auc"] for x in deepfm["runs"]} if deepfm is not None else {}
    for r in rows:  # seed by seed; without a DeepFM row (--rows) or a failed DeepFM seed, the column is empty
        r["vs_deepfm"] = [x["auc"] - base[x["seed"]] for x in r["runs"] if x["seed"] in base] or None
    return rows


def table(name: str, rows: list[dict], seeds: list[int]) -> str:
    def ms(values) -> str:
        v = np.asarray(values, dtype=np.float64)
        return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"

    per_user = rows[0]["runs"][0]["candidates_per_user"] if rows else 0.0
    out = [f"### {name} ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
           "| model | val log loss | test AUC | test UAUC | test log loss | epochs kept | AUC vs DeepFM | params | "
           "MFLOPs/cand |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        col = lambda k: [x[k] for x in r["runs"]]  # noqa: E731
        out.append(f"| {r['model']} | {ms(col('val_logloss'))} | {ms(col('auc'))} | {ms(col('uauc'))} | "
                   f"{ms(col('logloss'))} | {'/'.join(f'{e:g}' for e in col('epoch'))} | "
                   + (f"{np.mean(r['vs_deepfm']):+.4f} |" if r["vs_deepfm"] is not None else "- |")
                   + f" {r['runs'][0]['params']:,} | {r['runs'][0]['flops'] / 1e6:.3g} |")
    pools = []  # CollectiveKV rows: how the test users' events spread over the pools (mean of layers, K and V)
    for r in rows:
        usage = [x["kv_pool"] for x in r["runs"] if x.get("kv_pool")]
        if usage:
            used, top = (np.mean([np.mean(u[k]) for u in usage]) for k in ("rows_used", "top10_share"))
            pools.append(f"{r['model']}: {used:.1%} of the pool rows serve some test event; the 10 busiest serve "
                         f"{top:.1%} of them.")
    with_deepfm = any(r["model"].startswith("deepfm") for r in rows)  # --rows may leave DeepFM out
    out += [""] + pools + (["\\* the DeepFM recipe its validation log loss prefers; the AUC column compares with it."]
                   if with_deepfm else []) + [
            f"MFLOPs/cand: matmul FLOPs per scored candidate at inference; under the UG-Sep split the user side is "
            f"divided over the test split's {per_user:.1f} candidates per user."]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="MovieLens-100k format files (default: generate a MovieLens-like set)")
    p.add_argument("--datasets", default="synthetic,movielens-100k",
                   help="comma-separated; a '+seq' suffix loads behaviour sequences and adds hyformer")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=TrainConfig().max_epochs)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (processes, one torch thread each)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows of the table to train "
                   "(default: all; the DeepFM comparison column needs 'deepfm (ugsep recipe)' or both DeepFMs)")
    p.add_argument("--device", default="cpu",
                   help="where each run trains: cpu, or cuda (faster; the same up to float rounding)")
    p.add_argument("--runs-file", help="a JSON-lines file: each finished run is appended to it, and runs already in "
                   "it (same row, dataset, seed and --max-epochs) are read back instead of trained again")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    datasets = a.datasets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, where = a.data_dir, a.data_dir
        if data_dir is None:
            data_dir, where = tmp, "generated by tests/movielens_fixture.write_movielens_like(seed=0)"
            write_movielens_like(Path(tmp))
        rows = a.rows.split(",")
        unknown = set(rows) - set(ROWS)
        if unknown:
            p.error(f"--rows: unknown {sorted(unknown)}; rows are {list(ROWS)}")
        jobs = [(row, d, data_dir, s, a.max_epochs, a.device) for s in seeds for d in datasets for row in rows
                if ROWS[row][0] != "hyformer" or dataset_args(d)[1]]  # hyformer needs the sequences; seed by seed
        source = a.data_dir or "generated"  # what the MovieLens-format rows read: a run file keys on it
        done = {_key(r): r for r in read_runs(a.runs_file)}
        runs = [done[_key(j, source)] for j in jobs if _key(j, source) in done]
        failed = []
        with ProcessPoolExecutor(a.jobs) as pool:
            futures = {pool.submit(run_one, j): j for j in jobs if _key(j, source) not in done}
            for fut in as_completed(futures):
                if fut.exception() is not None:  # the other runs go on; the table leaves this one out
                    failed.append(futures[fut])
                    print(f"{futures[fut][1]}: {futures[fut][0]} seed {futures[fut][3]} failed: {fut.exception()!r}",
                          file=sys.stderr, flush=True)
                    continue
                r = fut.result() | {"source": source}
                runs.append(r)
                print(f"{r['dataset']}: {r['row']} seed {r['seed']}: epoch {r['epoch']:g}, val logloss "
                      f"{r['val_logloss']:.4f}, test auc {r['auc']:.4f} ({r['seconds']:.0f} s)", file=sys.stderr,
                      flush=True)
                if a.runs_file:
                    with open(a.runs_file, "a") as f:
                        f.write(json.dumps(r) + "\n")
    if failed:
        print(f"{len(failed)} run(s) failed (above); the tables leave them out", file=sys.stderr)
    for d in datasets:
        title = f"{d} (oracle AUC {oracle_auc(d):.4f})" if d.startswith("synthetic") else f"{d} ({where})"
        print(table(title, collect(d, runs), seeds) + "\n", flush=True)


def _key(run: dict | tuple, source: str = "") -> tuple:
    """(row, dataset, seed, max_epochs, data source) of a finished run (a dict) or of a job (a tuple
    whose data source is ``source``: --data-dir, or "generated")."""
    if isinstance(run, dict):
        return run["row"], run["dataset"], run["seed"], run["max_epochs"], run.get("source")
    row, dataset, _, seed, max_epochs, _ = run
    return row, dataset, seed, max_epochs, source


def read_runs(path: str | None) -> list[dict]:
    """The runs a --runs-file holds (none where it does not exist yet)."""
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def oracle_auc(dataset: str) -> float:
    """AUC of the planted logit over all of the synthetic day's candidates: the ceiling."""
    from ugsep.data.datasets import SEQUENCE_LEN, SYNTHETIC_USERS
    from ugsep.data.synthetic import generate_day, generate_sequence_day
    from ugsep.metrics import auc

    seq = dataset_args(dataset)[1]
    day = (generate_sequence_day(SYNTHETIC_USERS, 0, SEQUENCE_LEN, max_cands=1000) if seq
           else generate_day(SYNTHETIC_USERS, seed=0, max_cands=1000))
    return auc(day.candidates["label"], day.candidates["true_logit"])


if __name__ == "__main__":
    main()
