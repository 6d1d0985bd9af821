"""Spark job commands: generate, user-stage, score-stage, run, baseline-score, show, demo, backfill."""

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
    start_spark,
)


def cmd_generate(a: argparse.Namespace) -> int:
    from jobs.generate import generate_tables

    spark, cfg = spark_job(a)
    print(json.dumps(generate_tables(spark, cfg, a.ds, a.users, mean_cands=a.mean_candidates, history=a.history)))
    return 0


def cmd_user_stage(a: argparse.Namespace) -> int:
    from jobs.user_stage import run_user_stage

    spark, cfg = spark_job(a)
    run_user_stage(spark, cfg, a.ds)
    if a.materialize:
        from jobs.materialize import materialize_day

        materialize_day(spark, cfg, a.ds, redis=a.redis)
    return 0


def cmd_score_stage(a: argparse.Namespace) -> int:
    from jobs.score_stage import run_score_stage

    run_score_stage(*spark_job(a), a.ds, compute_missing=a.compute_missing)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from jobs.run_day import run_day

    run_day(*spark_job(a), a.ds, compute_missing=a.compute_missing, materialize=a.materialize, redis=a.redis)
    return 0


def cmd_baseline(a: argparse.Namespace) -> int:
    from jobs.baseline import run_baseline

    run_baseline(*spark_job(a), a.ds, ckpt=a.baseline_model)
    return 0


def print_top(spark, cfg, ds: str, users: int, top: int) -> None:
    from jobs.report import top_items

    for user_id, items in top_items(spark, cfg, ds, users, top).items():
        print(f"user {user_id}: " + ", ".join(f"item {i} ({s:.3f})" for i, s in items))


def cmd_show(a: argparse.Namespace) -> int:
    spark, cfg = spark_job(a)
    print_top(spark, cfg, a.ds, a.users, a.top)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """generate + run + show in one Spark session (one JVM start instead of three)."""
    from jobs.generate import generate_tables
    from jobs.run_day import run_day
    from ugsep.checkpoint import read_spec

    spark, cfg = spark_job(a)
    # a sequence model reads user_events: the day before gets as many events per user as it keeps
    history = max((f.max_len for f in read_spec(cfg.model).sequence_fields), default=0)
    print(json.dumps(generate_tables(spark, cfg, a.ds, a.users, mean_cands=a.mean_candidates, history=history)),
          flush=True)
    run_day(spark, cfg, a.ds)
    print_top(spark, cfg, a.ds, 3, 5)
    return 0


def cmd_backfill(a: argparse.Namespace) -> int:
    from jobs.backfill import backfill, day_is_done, day_range
    from jobs.contracts import SCORES
    from jobs.delta_io import last_commit_of_day
    from jobs.run_day import ensure_run_tables, run_day
    from ugsep.checkpoint import checkpoint_info

    days = day_range(a.start, a.end)  # fails before Spark starts
    cfg = job_config(a)
    version = checkpoint_info(cfg.model).version
    spark = start_spark(a, cfg)
    ensure_run_tables(spark, cfg)

    def is_done(ds: str) -> bool:
        return a.skip_done and day_is_done(cfg, ds, version,
                                           lambda d: last_commit_of_day(spark, cfg.table_path(SCORES), d))

    report = backfill(days, lambda ds: run_day(spark, cfg, ds, allow_empty=a.allow_empty), parallel=a.parallel,
                      is_done=is_done)
    print(report.line())
    for ds, why in report.failed.items():
        print(f"  {ds} failed: {why}", file=sys.stderr)
    if not report.ok:
        print("rerun with --skip-done to pick up where this stopped", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_maintain(a: argparse.Namespace) -> int:
    from jobs.maintain import maintain

    cfg = job_config(a)
    print(json.dumps(maintain(start_spark(a, cfg), cfg, a.vacuum_hours, a.optimize)))
    return 0


def compute_missing_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compute-missing", action="store_true",
                   help="encode users without user_state on the fly instead of failing")


def synthetic_day_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=2000, help="users in the day")
    p.add_argument("--mean-candidates", type=float, default=40.0, help="mean candidates per user")


def register(sub) -> None:
    job = parent(day_option, config_options, spark_options)
    with_model = parent(model_option)
    p = sub.add_parser("generate", parents=[job, parent(synthetic_day_options)],
                       help="write a synthetic day into the input Delta tables",
                       description="Write candidates for --ds (replacing that day) and snapshot the "
                                   "user/item feature tables.")
    p.add_argument("--history", type=int, default=0, metavar="N",
                   help="also write the events of the day before --ds into user_events, up to N per user "
                        "(what a sequence model of length N reads); 0: none")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("user-stage", parents=[job, with_model, parent(redis_option)],
                       help="encode the day's users once; write user_state",
                       description="Distinct users of the day -> user features -> encode_users on Arrow "
                                   "batches -> user_state.")
    p.add_argument("--materialize", action="store_true", help="then load the state into the online store")
    p.set_defaults(func=cmd_user_stage)

    p = sub.add_parser("score-stage", parents=[job, with_model, parent(compute_missing_option)],
                       help="score every user's candidates from user_state; write scores",
                       description="Candidates -> item features -> one group per user -> join user_state -> "
                                   "score_groups -> scores.")
    p.set_defaults(func=cmd_score_stage)

    p = sub.add_parser("run", parents=[job, with_model, parent(compute_missing_option, redis_option)],
                       help="user stage (then materialize) then score stage for one day",
                       description="The daily pipeline for --ds in one Spark session, one summary: user stage, "
                                   "with --materialize the online store load, then the score stage.")
    p.add_argument("--materialize", action="store_true",
                   help="load the day's user_state into the online store between the stages")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("baseline-score", parents=[job], help="naive one-stage scoring with predict_batch_udf "
                                                             "(for comparison)",
                       description="Join everything per candidate and run the full model per candidate; "
                                   "writes baseline_scores.")
    p.add_argument("--baseline-model", help="checkpoint for the baseline (default: the config's model)")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("show", parents=[job], help="print the top items of a few users from the scores table",
                       description="Read scores for --ds and print the best items of the first users.")
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("demo", parents=[job, with_model, parent(synthetic_day_options)],
                       help="generate a synthetic day, run both stages, show top items",
                       description="What `make demo` runs after training: generate + run + show in one "
                                   "Spark session.")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backfill", parents=[parent(config_options, spark_options), with_model],
                       help="run `ugsep run` for a range of days",
                       description="Run days in order (or --parallel K at a time); stop after a failure with "
                                   "a summary; --skip-done skips days already complete for this model version.")
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    p.add_argument("--parallel", type=int, default=1, help="days run at once in one Spark session")
    p.add_argument("--skip-done", action="store_true", help="skip days whose run is complete for this model")
    p.add_argument("--allow-empty", action="store_true",
                   help="record a day without candidates as done with zero rows instead of failing it "
                        "(its tables are left as they are)")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("maintain", parents=[parent(config_options, spark_options)],
                       help="Delta housekeeping: VACUUM (and OPTIMIZE) the pipeline's tables",
                       description="VACUUM removes data files the Delta log no longer references (replaced "
                                   "days, files of killed writes) older than the retention; --optimize compacts "
                                   "small files. Delta refuses a retention under 168 hours unless "
                                   "--conf spark.databricks.delta.retentionDurationCheck.enabled=false.")
    p.add_argument("--vacuum-hours", type=float, help="retention in hours (default: Delta's, 168)")
    p.add_argument("--optimize", action="store_true", help="also compact each table's small files")
    p.set_defaults(func=cmd_maintain)
