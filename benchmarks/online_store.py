"""Feature store numbers: materialization rate, online lookup latency, online scoring latency.

One synthetic day goes through the user stage, then into the SQLite online store and (if
redis-server is installed) a Redis one started here. Redis is materialized twice from the
same rows: written from the executors (the job's path) and through the driver (SQLite's
path). Online scoring of 1 user x 500 candidates from the stored state is compared with
computing the user side from the user's features in the same run (the path a scorer without
precomputed state takes).

    python benchmarks/online_store.py [--users 5000] [--master spark://127.0.0.1:7077] [--json]
    python benchmarks/online_store.py --sequence-len 200 [--collective-kv]   # HyFormer's state

With ``--sequence-len N`` the day has N-event histories and the model is a HyFormer (its state
holds each layer's sequence K/V; ``--collective-kv``: their CollectiveKV form).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scoring_service import interleaved  # noqa: E402
from split_vs_full import MIXER_ONLY  # noqa: E402  (benchmarks/ is the script's folder)

from feature_store.online_write import write_arrow
from feature_store.store import feature_store
from jobs.cluster import conf_for_master
from jobs.config import JobConfig
from jobs.contracts import USER_STATE
from jobs.delta_io import read_table
from jobs.generate import generate_tables, synthetic_histories, synthetic_tables
from jobs.materialize import materialize_day
from jobs.spark_session import build_spark
from jobs.user_stage import run_user_stage
from serving.online_scorer import OnlineScorer
from ugsep.checkpoint import save_checkpoint
from ugsep.data.ranking_data import to_tensors
from ugsep.data.synthetic import synthetic_sequence_spec, synthetic_spec
from ugsep.model import ModelConfig, RankingModel

DS = "2026-11-24"


def latencies_ms(fn, n: int) -> dict:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def online_write_rates(store, rows) -> dict:
    """The online write alone, same rows, same store: ours (Arrow -> protos) vs Feast's write_to_online_store."""
    t = time.perf_counter()
    write_arrow(store, "user_state", rows)
    ours = time.perf_counter() - t
    frame = rows.to_pandas()
    t = time.perf_counter()
    store.write_to_online_store("user_state", frame)
    feast = time.perf_counter() - t
    return {"online_write_users_per_s": round(rows.num_rows / ours, 1),
            "feast_write_to_online_store_users_per_s": round(rows.num_rows / feast, 1),
            "online_write_speedup": round(feast / ours, 2)}


def materialize_rates(spark, cfg: JobConfig, redis: str, rounds: int = 2) -> dict:
    """The same day materialized again, through the driver and from the executors in turn, on
    the warm session; the best of ``rounds`` runs of each (a shared machine's noise only slows)."""
    rates: dict[str, list[float]] = {"from_driver": [], "from_executors": []}
    for _ in range(rounds):
        for key, from_driver in (("from_driver", True), ("from_executors", False)):
            m = materialize_day(spark, cfg, DS, redis=redis, with_user_features=False, from_driver=from_driver)
            rates[key].append(m["user_state_rows"] / m["seconds"])
    driver, executors = max(rates["from_driver"]), max(rates["from_executors"])
    return {"materialize_from_driver_users_per_s": round(driver, 1),
            "materialize_from_executors_warm_users_per_s": round(executors, 1),
            "materialize_executor_speedup": round(executors / driver, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--master", default=None,
                   help="Spark master URL of the session (default: local[*]); the workers must see this "
                        "machine's temporary directory and the Redis started here on 127.0.0.1")
    p.add_argument("--cluster-root", default="runs/cluster",
                   help="where `ugsep cluster start` keeps the cluster it made (its settings are used for --master)")
    p.add_argument("--sequence-len", type=int, default=0, help="histories of N events and a HyFormer model (0: none)")
    p.add_argument("--collective-kv", action="store_true", help="with --sequence-len: the HyFormer uses CollectiveKV")
    p.add_argument("--read", choices=("feast", "lean"), default="feast",
                   help="how the online score reads the state (the service's default is lean)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the online scorer's precision (ugsep serve --dtype)")
    p.add_argument("--threads", type=int, help="torch threads of the online scorer (default: torch's)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    work = tempfile.mkdtemp(prefix="ugsep-fs-")
    torch.manual_seed(0)
    spec = synthetic_sequence_spec(a.sequence_len) if a.sequence_len else synthetic_spec()
    dims = dict(d_model=a.d_model, n_user_tokens=4, n_group_tokens=4, **MIXER_ONLY)
    if a.sequence_len:
        dims |= dict(arch="hyformer", compensation=False, collective_kv=a.collective_kv)
    save_checkpoint(RankingModel(spec, ModelConfig(**dims)).eval(), f"{work}/model")
    cfg = JobConfig(warehouse=f"{work}/warehouse", model=f"{work}/model")
    spark = build_spark("ugsep-fs-bench", conf_for_master(a.master, a.cluster_root) if a.master else None)
    generate_tables(spark, cfg, DS, a.users, mean_cands=5, history=a.sequence_len)
    run_user_stage(spark, cfg, DS)

    state_rows = read_table(spark, USER_STATE, cfg.table_path(USER_STATE)).select(
        "user_id", "model_version", "state", "created_at", "event_ts").toArrow()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from local_redis import start_redis_server

    proc, redis = start_redis_server()
    stores = {"sqlite": None, **({"redis": redis} if redis else {})}
    users, items, cands = synthetic_tables(DS, a.users, mean_cands=5)
    rng = np.random.default_rng(0)
    cand = rng.integers(0, len(items["item_id"]), 500)
    if a.sequence_len:  # the histories the user stage built, for the from-scratch comparison
        users = synthetic_histories(DS, a.users, history=a.sequence_len)
    request = {f.name: items[f.name][cand] for f in spec.item_fields}
    request.update({f.name: rng.exponential(24.0, 500).astype(np.float32) for f in spec.context_fields})
    ids = users["user_id"]
    result: dict = {"users": a.users, "d_model": a.d_model, "master": spark.sparkContext.master,
                    "sequence_len": a.sequence_len, "collective_kv": a.collective_kv, "read": a.read, "dtype": a.dtype,
                    "torch_threads": torch.get_num_threads(),
                    "state_floats_per_user": len(state_rows.column("state")[0])}
    try:
        for name, conn in stores.items():
            m = materialize_day(spark, cfg, DS, redis=conn, with_user_features=False)
            compared = materialize_rates(spark, cfg, conn) if m["written_from"] == "executors" else {}
            scorer = OnlineScorer(cfg.model, cfg.warehouse, redis=conn, read=a.read, dtype=a.dtype)
            one = latencies_ms(lambda: scorer.fetch_states([int(rng.choice(ids))]), a.lookups)
            hundred = latencies_ms(lambda: scorer.fetch_states(rng.choice(ids, 100).tolist()), a.lookups // 4)
            uid = int(ids[0])
            paths = {"score": lambda: scorer.score(uid, request)}
            if a.dtype != "float32":  # the same request in float32, for the ratio: the two interleaved
                f32 = OnlineScorer(cfg.model, cfg.warehouse, redis=conn, read=a.read)
                paths["float32"] = lambda: f32.score(uid, request)
            timed = interleaved(paths, a.lookups // 4)
            result[name] = {"materialize_users_per_s": round(m["user_state_rows"] / m["seconds"], 1),
                            "materialize_written_from": m["written_from"], **compared,
                            "lookup_1": one, "lookup_100": hundred, "online_score_1x500": timed["score"],
                            **online_write_rates(feature_store(cfg.warehouse, conn), state_rows)}
            if "float32" in timed:
                result[name]["online_score_1x500_float32"] = timed["float32"]
        # the same request with the user side computed from features instead of the stored state
        model = scorer.model
        user_cols = to_tensors({k: v[:1] for k, v in users.items()})
        item_t = to_tensors(request)
        idx = torch.zeros(500, dtype=torch.long)

        def from_scratch():
            with torch.inference_mode():
                model.score_groups(model.encode_users(user_cols), item_t, idx)

        def user_side():
            with torch.inference_mode():
                model.encode_users(user_cols)

        result["score_1x500_user_side_from_scratch_model_only"] = latencies_ms(from_scratch, a.lookups // 4)
        result["user_side_from_scratch_model_only"] = latencies_ms(user_side, a.lookups // 4)
    finally:
        if proc:
            proc.terminate()
    for name in stores:
        r = result[name]
        print(f"{name}: materialize {r['materialize_users_per_s']:,.0f} users/s (written from the "
              f"{r['materialize_written_from']}); lookup p50/p99 "
              f"{r['lookup_1']['p50_ms']}/{r['lookup_1']['p99_ms']} ms (1 user), "
              f"{r['lookup_100']['p50_ms']}/{r['lookup_100']['p99_ms']} ms (100 users); online score 1x500 "
              f"p50/p99 {r['online_score_1x500']['p50_ms']}/{r['online_score_1x500']['p99_ms']} ms "
              f"({a.read} read, {torch.get_num_threads()} threads, "
              f"{a.dtype}); the user side: stored read p50 {r['lookup_1']['p50_ms']} ms vs computed "
              f"{result['user_side_from_scratch_model_only']['p50_ms']} ms "
              f"({result['user_side_from_scratch_model_only']['p50_ms'] / r['lookup_1']['p50_ms']:.1f}x)")
        if "online_score_1x500_float32" in r:
            f32 = r["online_score_1x500_float32"]
            print(f"{name}: online score 1x500 in float32 p50/p99 {f32['p50_ms']}/{f32['p99_ms']} ms; "
                  f"{a.dtype} vs float32 (p50): {r['online_score_1x500']['p50_ms'] / f32['p50_ms']:.2f}x")
        if "materialize_from_driver_users_per_s" in r:
            print(f"{name}: materialize again, same rows, best of 2: through the driver "
                  f"{r['materialize_from_driver_users_per_s']:,.0f} users/s, from the executors "
                  f"{r['materialize_from_executors_warm_users_per_s']:,.0f} users/s "
                  f"({r['materialize_executor_speedup']:.2f}x)")
        print(f"{name}: online write alone {r['online_write_users_per_s']:,.0f} users/s vs Feast's "
              f"write_to_online_store {r['feast_write_to_online_store_users_per_s']:,.0f} users/s on the same "
              f"rows: {r['online_write_speedup']:.2f}x")
    print(f"model-only 1x500 with the user side computed from scratch: p50/p99 "
          f"{result['score_1x500_user_side_from_scratch_model_only']['p50_ms']}/"
          f"{result['score_1x500_user_side_from_scratch_model_only']['p99_ms']} ms; state "
          f"{result['state_floats_per_user']:,} floats per user")
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
