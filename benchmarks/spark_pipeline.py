"""Two-stage UG-Sep job (`ugsep run`) vs the naive one-stage baseline (`ugsep baseline-score`).

One synthetic day, one local Spark session, models of the same size (ugsep for the two-stage
job, rankmixer for the baseline, random weights: speed does not depend on them). Prints the
wall-time ratio and the share of the two-stage wall time spent outside model compute, where
model compute is the same model on the same rows without Spark, run as the Spark job runs it:
one single-threaded process per Spark core, each scoring its share of the users at once (the
slowest one's time counts), in the job's model calls (256 users per user-stage call, whole
users up to 4,096 candidates per score-stage call). Both
jobs first run once on a smaller day, so neither pays the session's first-use costs (JVM code
paths, Python workers, torch import) for the other. That day has 2,000 users (200k
candidates): with 300 the JVM was still compiling hot Spark, Delta and Arrow code during the
two-stage job, which runs first, and the baseline after it found that code compiled.

The default width is D=128: at D=64 the model is so small that the JVM's per-row work on 2
cores costs about as much as the model (pass --d-model 64 to see it).

Each job then runs ``--repeats`` times, alternating (two-stage, baseline, two-stage, ...), and
the model reference as often: the fastest of each counts. One run of a job on this shared
2-core machine varied by 10-20% from run to run.

With ``--sequence-len N`` the day also has N-event user histories (``user_events``) and both
jobs run one HyFormer checkpoint (``--collective-kv``: with CollectiveKV): the two-stage job
encodes each sequence once per user, the baseline once per candidate row, which carries it.

    python benchmarks/spark_pipeline.py [--users 20000] [--mean-candidates 100] [--d-model 128]
        [--warmup-users 2000] [--repeats 2] [--conf KEY=VALUE ...] [--json]
    python benchmarks/spark_pipeline.py --sequence-len 200 --users 1000 --warmup-users 200 [--collective-kv]

With ``--master spark://HOST:PORT`` the same jobs run on that cluster too, after local mode with
as many cores as the cluster has, on the same tables in the same process (local first: its
driver JVM is the one both sessions share). The ratios compare the cluster with local mode. A
cluster that `ugsep cluster start` made (``--cluster-root``) lends its application settings
(executor sizes, partitions), less its short-job JVM options: both modes' JVMs run with
``LOCAL_DEFAULTS``' options, so they compile the same way.

    ugsep cluster start && python benchmarks/spark_pipeline.py --master spark://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time

import numpy as np
import torch
from split_vs_full import MIXER_ONLY  # noqa: E402  (benchmarks/ is the script's folder)

from jobs.baseline import run_baseline
from jobs.config import JobConfig, spark_conf_pairs
from jobs.generate import generate_tables, synthetic_histories, synthetic_tables
from jobs.run_day import run_day
from jobs.spark_session import build_spark
from ugsep.checkpoint import load_checkpoint, save_checkpoint
from ugsep.data.ranking_data import RankingData, to_tensors, whole_user_cuts
from ugsep.data.synthetic import join_day, synthetic_sequence_spec, synthetic_spec
from ugsep.host_memory import keep_freed_memory
from ugsep.model import ModelConfig, RankingModel
from ugsep.state import UserState

DS = "2026-11-24"
WARMUP_DS = "2026-11-23"


def _score_share(ckpt: str, a: argparse.Namespace, part: int, parts: int, barrier, out) -> None:
    """One process's share of the day (users with id % parts == part), one thread, timed after setup."""
    torch.set_num_threads(1)
    keep_freed_memory()  # as the Spark workers do
    model, _ = load_checkpoint(ckpt)
    users, items, cands = synthetic_tables(DS, a.users, mean_cands=a.mean_candidates)
    if a.sequence_len:  # the histories the jobs build from user_events
        users = synthetic_histories(DS, a.users, history=a.sequence_len)
    mine = cands["user_id"] % parts == part
    data = join_day(users, items, {k: v[mine] for k, v in cands.items()}, model.spec)
    data = data.take(np.argsort(data.user_row, kind="stable"))  # its users only, candidates in user order
    barrier.wait()
    t = time.perf_counter()
    score_in_job_calls(model.eval(), data, a.users_per_batch, a.max_candidates_per_call)
    out.put(time.perf_counter() - t)


@torch.inference_mode()
def score_in_job_calls(model: RankingModel, data: RankingData, users_per_call: int, max_candidates: int) -> None:
    """The model calls the Spark workers make, without Spark (``data``'s candidates in user order):
    the user stage encodes ``users_per_call`` users a call; the score stage scores whole users a
    call, at most ``max_candidates`` candidates (a user with more gets a call of its own)."""
    flat = torch.cat([
        model.encode_users(to_tensors({k: v[s:s + users_per_call] for k, v in data.users.items()})).to_flat()
        for s in range(0, data.n_users, users_per_call)])
    for begin, end in whole_user_cuts(data.user_row, max_candidates):
        first, last = data.user_row[begin], data.user_row[end - 1]
        state = UserState.from_flat(flat[first:last + 1], model.state_layout)
        items = to_tensors({k: v[begin:end] for k, v in data.items.items()})
        model.score_groups(state, items, torch.from_numpy(data.user_row[begin:end] - first))


def model_seconds(ckpt: str, a: argparse.Namespace, parts: int) -> float:
    """Seconds for ``parts`` single-threaded processes to score the day together: the model
    compute in the Spark job's shape (one Python worker per core), without Spark."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(parts), ctx.Queue()
    procs = [ctx.Process(target=_score_share, args=(ckpt, a, k, parts, barrier, out)) for k in range(parts)]
    for p in procs:
        p.start()
    secs = max(out.get() for _ in procs)
    for p in procs:
        p.join()
    return secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--mean-candidates", type=float, default=100.0)
    p.add_argument("--users-per-batch", type=int, default=JobConfig.users_per_batch)
    p.add_argument("--max-candidates-per-call", type=int, default=JobConfig.max_candidates_per_call)
    p.add_argument("--d-model", type=int, default=128, help="model width (both models)")
    p.add_argument("--tokens", type=int, default=4, help="user tokens = group tokens")
    p.add_argument("--warmup-users", type=int, default=2000,
                   help="users of a small day both jobs run first (JVM code paths, Python workers, torch)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each job (alternating); the fastest counts")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="Spark setting for the session, e.g. to compare JVM options (repeatable)")
    p.add_argument("--sequence-len", type=int, default=0,
                   help="behaviour sequences of this length and a HyFormer model for both jobs (0: none)")
    p.add_argument("--collective-kv", action="store_true", help="with --sequence-len: the HyFormer uses CollectiveKV")
    p.add_argument("--master", default="", help="also run on this Spark cluster (spark://HOST:PORT) and compare")
    p.add_argument("--cluster-root", default="runs/cluster",
                   help="where `ugsep cluster start` keeps the cluster it made (its settings are used for --master)")
    p.add_argument("--no-baseline", action="store_true",
                   help="time the two-stage job alone: its overhead share on a day too large for the baseline")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    a = p.parse_args()
    try:
        conf = spark_conf_pairs(a.conf)
    except ValueError as e:
        p.error(str(e))

    work = tempfile.mkdtemp(prefix="ugsep-bench-")
    torch.manual_seed(0)
    spec = synthetic_sequence_spec(a.sequence_len) if a.sequence_len else synthetic_spec()
    dims = dict(d_model=a.d_model, n_user_tokens=a.tokens, n_group_tokens=a.tokens, **MIXER_ONLY)
    if a.sequence_len:  # one HyFormer for both jobs: split by the two stages, full forward per row by the baseline
        hy = ModelConfig(arch="hyformer", compensation=False, collective_kv=a.collective_kv, **dims)
        dims = hy.to_dict()
        save_checkpoint(RankingModel(spec, hy), f"{work}/split")
        base_ckpt = f"{work}/split"
    else:
        for arch, name in (("ugsep", "split"), ("rankmixer", "rankmixer")):
            save_checkpoint(RankingModel(spec, ModelConfig(arch=arch, compensation=False, **dims)), f"{work}/{name}")
        base_ckpt = f"{work}/rankmixer"
    cfg = JobConfig(warehouse=f"{work}/warehouse", model=f"{work}/split", users_per_batch=a.users_per_batch,
                    max_candidates_per_call=a.max_candidates_per_call)
    modes = session_confs(a, conf)
    results = {}
    for n, (mode, mode_conf) in enumerate(modes.items()):
        spark = build_spark("ugsep-bench", mode_conf)
        if n == 0:  # generated first: each day rewrites the user and item feature tables
            if a.warmup_users:
                generate_tables(spark, cfg, WARMUP_DS, a.warmup_users, mean_cands=a.mean_candidates,
                                history=a.sequence_len)
            gen = generate_tables(spark, cfg, DS, a.users, mean_cands=a.mean_candidates, history=a.sequence_len)
        cores = spark.sparkContext.defaultParallelism
        print(f"{mode} ({spark.sparkContext.master}): day of {gen['candidates']:,} candidates, {gen['users']:,} "
              f"users; {cores} Spark cores", flush=True)
        results[mode] = time_jobs(spark, cfg, base_ckpt, a, gen["candidates"])
        spark.stop()
    result = {"candidates": gen["candidates"], "users": gen["users"], "dims": dims, "conf": conf}
    for mode, (walls, cores) in results.items():
        wall_two, wall_base = min(walls["two-stage"]), min(walls["baseline"], default=float("nan"))
        models = [model_seconds(f"{work}/split", a, cores) for _ in range(a.repeats)]
        model_secs = min(models)
        prefix = "" if mode == "local" else "cluster_"
        result |= {
            f"{prefix}two_stage_wall_s": round(wall_two, 2),
            f"{prefix}two_stage_walls_s": [round(w, 2) for w in walls["two-stage"]],
            f"{prefix}model_compute_runs_s": [round(m, 2) for m in models],
            f"{prefix}model_compute_s": round(model_secs, 2), f"{prefix}model_processes": cores,
            f"{prefix}overhead_share": round(max(0.0, 1 - model_secs / wall_two), 3),
            f"{prefix}two_stage_cand_per_s": round(gen["candidates"] / wall_two, 1),
        }
        if not a.no_baseline:
            result |= {
                f"{prefix}baseline_wall_s": round(wall_base, 2),
                f"{prefix}baseline_walls_s": [round(w, 2) for w in walls["baseline"]],
                f"{prefix}speedup": round(wall_base / wall_two, 3),
                f"{prefix}baseline_cand_per_s": round(gen["candidates"] / wall_base, 1),
            }
        versus = "" if a.no_baseline else f" vs baseline {wall_base:.1f}s: speedup {wall_base / wall_two:.2f}x"
        print(f"{mode}: two-stage {wall_two:.1f}s{versus}; "
              f"model compute {model_secs:.1f}s -> Spark/Arrow/Delta overhead "
              f"{result[prefix + 'overhead_share']:.0%} of the two-stage wall time")
    if "cluster" in results and not a.no_baseline:
        for job in ("two_stage", "baseline"):
            result[f"cluster_vs_local_{job}"] = round(result[f"cluster_{job}_wall_s"] / result[f"{job}_wall_s"], 3)
        print(f"cluster vs local[{results['local'][1]}] wall time: two-stage "
              f"{result['cluster_vs_local_two_stage']:.2f}x, baseline {result['cluster_vs_local_baseline']:.2f}x "
              "(above 1: the cluster is slower)")
    if a.json:
        print(json.dumps(result))


def session_confs(a: argparse.Namespace, conf: dict[str, str]) -> dict[str, dict[str, str]]:
    """The Spark settings of each mode: local only, or local with the cluster's cores, then the cluster."""
    if not a.master:
        return {"local": conf}
    from jobs.cluster import conf_for_master, read_cluster
    from jobs.spark_session import LOCAL_DEFAULTS

    jvm = LOCAL_DEFAULTS["spark.driver.extraJavaOptions"]
    cluster = conf_for_master(a.master, a.cluster_root) | {"spark.driver.extraJavaOptions": jvm,
                                                           "spark.executor.extraJavaOptions": jvm}
    made = read_cluster(a.cluster_root)
    cores = made.workers * made.cores if made is not None and made.master_url == a.master else 0
    return {"local": {**conf, "spark.master": f"local[{cores or '*'}]"}, "cluster": {**cluster, **conf}}


def time_jobs(spark, cfg: JobConfig, base_ckpt: str, a: argparse.Namespace,
              candidates: int) -> tuple[dict[str, list[float]], int]:
    """Each job's walls (warmed up first, ``--repeats`` alternating runs) and the session's cores."""
    if a.warmup_users:  # neither job should pay the session's first-use costs for the other
        run_day(spark, cfg, WARMUP_DS)
        if not a.no_baseline:
            run_baseline(spark, cfg, WARMUP_DS, ckpt=base_ckpt)
    walls: dict[str, list[float]] = {"two-stage": [], "baseline": []}
    jobs = {"two-stage": lambda: run_day(spark, cfg, DS),
            "baseline": lambda: run_baseline(spark, cfg, DS, ckpt=base_ckpt)}
    if a.no_baseline:
        del jobs["baseline"]
    for _ in range(a.repeats):
        for name, job in jobs.items():
            t = time.perf_counter()
            summary = job()
            walls[name].append(time.perf_counter() - t)
            assert summary["rows_out"] == candidates, (name, summary["rows_out"])
            print(f"{name} {walls[name][-1]:.1f}s: " +
                  ", ".join(f"{k} {v:.1f}s" for k, v in summary["seconds"].items()), flush=True)
    return walls, spark.sparkContext.defaultParallelism


if __name__ == "__main__":
    main()
