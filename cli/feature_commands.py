"""Feature-store and serving commands: features apply, materialize, serve-score, serve."""

from __future__ import annotations

import argparse
import json
import sys

from cli.common import (
    config_options,
    day_option,
    job_config,
    model_option,
    parent,
    redis_option,
    spark_job,
    spark_options,
)


def cmd_features(a: argparse.Namespace) -> int:
    from jobs.materialize import apply_features

    names = apply_features(job_config(a), redis=a.redis)
    print(f"applied to project ugsep: {', '.join(names)}")
    return 0


def cmd_materialize(a: argparse.Namespace) -> int:
    from jobs.materialize import materialize_day

    spark, cfg = spark_job(a)
    print(json.dumps(materialize_day(spark, cfg, a.ds, redis=a.redis, batch_rows=a.batch_rows, force=a.force)))
    return 0


def cmd_serve_score(a: argparse.Namespace) -> int:
    from serving.online_scorer import OnlineScorer, items_from_records

    cfg = job_config(a)
    scorer = OnlineScorer(cfg.model, cfg.warehouse, redis=a.redis or cfg.redis or None)
    with open(a.items) as f:
        records = json.load(f)
    print(json.dumps(scorer.score(a.user_id, items_from_records(records, scorer.spec)).to_dict()))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import torch

    from serving.app import ServeLimits, serve
    from serving.batching import BatchSettings
    from serving.online_scorer import OnlineScorer, native_bf16_cpu

    for name in ("port", "max_candidates", "max_body_bytes", "max_batch_candidates", "threads"):
        value = getattr(a, name)
        if value is not None and (value < 1 or (name == "port" and value > 65535)):
            raise ValueError(f"--{name.replace('_', '-')} must be {'1..65535' if name == 'port' else 'at least 1'}, "
                             f"got {value}")
    if a.batch_window_ms < 0:
        raise ValueError(f"--batch-window-ms must be at least 0, got {a.batch_window_ms}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.dtype == "bfloat16" and native_bf16_cpu() is False:
        print("ugsep serve: warning: this CPU has no native bf16 products (avx512_bf16 or amx_bf16); "
              "--dtype bfloat16 emulates them here and may be slower than float32", file=sys.stderr, flush=True)
    cfg = job_config(a)
    scorer = OnlineScorer(cfg.model, cfg.warehouse, redis=a.redis or cfg.redis or None, read=a.read,
                          other_version=a.other_version, dtype=a.dtype)
    serve(scorer, a.host, a.port, ServeLimits(a.max_candidates, a.max_body_bytes),
          BatchSettings(not a.no_batching, a.batch_window_ms, a.max_batch_candidates), a.log_level)
    return 0


def register(sub) -> None:
    store = parent(config_options, redis_option)
    f = sub.add_parser("features", parents=[store], help="Feast repository commands",
                       description="Register the ugsep Feast objects (entities, feature views) for the "
                                   "config's warehouse.")
    f.add_argument("action", choices=("apply",))
    f.set_defaults(func=cmd_features)

    m = sub.add_parser("materialize", parents=[store, parent(day_option, spark_options)],
                       help="load a day's user_state (and user features) into the online store",
                       description="Write user_state of --ds and the user feature snapshot to Feast's online "
                                   "store, in batches.")
    m.add_argument("--batch-rows", type=int, default=20000, help="users per online-store write")
    m.add_argument("--force", action="store_true",
                   help="write the day even if the online store holds a later day's user_state")
    m.set_defaults(func=cmd_materialize)

    o = sub.add_parser("serve-score", parents=[store, parent(model_option)],
                       help="score one user's candidates online from the feature store",
                       description="Fetch the user's state from the online store (or compute it from the "
                                   "user's features) and score the candidates in --items; prints JSON.")
    o.add_argument("--user-id", type=int, required=True)
    o.add_argument("--items", required=True, help="JSON file: a list of candidate objects with item fields")
    o.set_defaults(func=cmd_serve_score)

    s = sub.add_parser("serve", parents=[store, parent(model_option)],
                       help="an HTTP scoring service (POST /score) over the online store",
                       description="Load the model once and answer POST /score {user_id, candidates} with the "
                                   "candidates' scores, from the user's stored state (or its features); "
                                   "GET /health, /ready, /stats. Stops on SIGINT/SIGTERM.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--read", choices=("lean", "feast"), default="lean",
                   help="how user state is read: straight from SQLite/Redis (lean) or via Feast's "
                        "get_online_features (feast)")
    s.add_argument("--other-version", choices=("refuse", "compute"), default="refuse",
                   help="a user whose stored state is of another model version: answer 409 (refuse) or "
                        "encode the user from its features (compute, e.g. during a model rollout)")
    s.add_argument("--max-candidates", type=int, default=4096, help="candidates per request (more: 413)")
    s.add_argument("--max-body-bytes", type=int, default=4 << 20, help="bytes per request body (more: 413)")
    s.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="micro-batching: how long a request waits for others being received")
    s.add_argument("--max-batch-candidates", type=int, default=2048,
                   help="micro-batching: candidates per model call (raise it on a GPU)")
    s.add_argument("--no-batching", action="store_true", help="one model call per request")
    s.add_argument("--threads", type=int, help="torch threads of the model (default: torch's)")
    s.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the model's precision: float32 (the batch jobs' scores) or bfloat16 (faster on "
                        "CPUs with avx512_bf16/AMX; scores differ by bf16 rounding)")
    s.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    s.set_defaults(func=cmd_serve)
