"""Feature-store commands: features apply, materialize, serve-score."""

from __future__ import annotations

import argparse
import json

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
