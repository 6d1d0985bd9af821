"""The ``ugsep`` command: one entry point, subcommands defined next to what they run.

Heavy imports (torch, Spark) happen inside each command so ``ugsep --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("synthetic", "movielens-100k"), default="synthetic",
                   help="training data: a seeded synthetic day, or MovieLens-100k files")
    p.add_argument("--data-dir", help="folder holding u.data, u.user, u.item (movielens-100k)")


def _report(model, test, extra: dict) -> dict:
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
    version = save_checkpoint(model.cpu(), a.out, extra={"dataset": a.dataset, "seed": a.seed})
    print(json.dumps(_report(model, test, {"model_version": version,
                                           "seconds": round(time.perf_counter() - t0, 1)})))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from ugsep.checkpoint import load_checkpoint
    from ugsep.data.datasets import load_dataset

    model, version = load_checkpoint(a.ckpt)
    _, _, test = load_dataset(a.dataset, a.data_dir, a.seed)
    print(json.dumps(_report(model, test, {"model_version": version})))
    return 0


def cmd_backfill(a: argparse.Namespace) -> int:
    from jobs.run_day import ensure_run_tables, run_day
    from jobs.spark_session import build_spark
    from pipelines.backfill import backfill, day_is_done, day_range
    from ugsep.checkpoint import read_config

    days = day_range(a.start, a.end)  # fails before Spark starts
    cfg = _job_config(a)
    version = read_config(cfg.model)["model_version"]
    spark = build_spark("ugsep-backfill", cfg.spark)
    ensure_run_tables(spark, cfg)
    report = backfill(days, lambda ds: run_day(spark, cfg, ds), parallel=a.parallel,
                      is_done=(lambda ds: day_is_done(cfg, ds, version)) if a.skip_done else (lambda ds: False))
    print(report.line())
    for ds, why in report.failed.items():
        print(f"  {ds} failed: {why}", file=sys.stderr)
    if not report.ok:
        print("rerun with --skip-done to pick up where this stopped", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_quantize(a: argparse.Namespace) -> int:
    from ugsep.quant.cli_support import quantize_checkpoint

    print(json.dumps(quantize_checkpoint(a.ckpt, a.out, a.mode, a.calib_rows, a.group_size)))
    return 0


def cmd_score_local(a: argparse.Namespace) -> int:
    from ugsep.checkpoint import load_checkpoint
    from ugsep.local_scoring import score_day_in_memory

    model, version = load_checkpoint(a.ckpt)
    summary = score_day_in_memory(model, n_users=a.users, seed=a.seed, batch_users=a.batch_users)
    summary["model_version"] = version
    print(json.dumps(summary))
    return 0


def _job_config(a: argparse.Namespace):
    """The job config with the command line's --model and --conf applied."""
    from jobs.config import load_config, spark_conf_pairs

    cfg = load_config(a.config, model=getattr(a, "model", None))
    cfg.spark.update(spark_conf_pairs(a.conf or []))
    return cfg


def _spark_job(a: argparse.Namespace):
    """Load the job config, apply --model and --conf, and start (or join) the Spark session."""
    from jobs.config import parse_ds
    from jobs.spark_session import build_spark

    parse_ds(a.ds)  # fail before Spark starts
    cfg = _job_config(a)
    return build_spark(f"ugsep-{a.command}", cfg.spark), cfg


def cmd_generate(a: argparse.Namespace) -> int:
    from jobs.generate import generate_tables

    spark, cfg = _spark_job(a)
    print(json.dumps(generate_tables(spark, cfg, a.ds, a.users, mean_cands=a.mean_candidates)))
    return 0


def cmd_user_stage(a: argparse.Namespace) -> int:
    from jobs.user_stage import run_user_stage

    spark, cfg = _spark_job(a)
    run_user_stage(spark, cfg, a.ds)
    if a.materialize:
        from jobs.materialize import materialize_day

        materialize_day(spark, cfg, a.ds, redis=a.redis)
    return 0


def cmd_materialize(a: argparse.Namespace) -> int:
    from jobs.materialize import materialize_day

    spark, cfg = _spark_job(a)
    print(json.dumps(materialize_day(spark, cfg, a.ds, redis=a.redis, batch_rows=a.batch_rows, force=a.force)))
    return 0


def cmd_features(a: argparse.Namespace) -> int:
    from jobs.config import load_config
    from jobs.materialize import apply_features

    names = apply_features(load_config(a.config), redis=a.redis)
    print(f"applied to project ugsep: {', '.join(names)}")
    return 0


def cmd_serve_score(a: argparse.Namespace) -> int:
    from features.online_scorer import OnlineScorer, items_from_records
    from jobs.config import load_config

    cfg = load_config(a.config, model=a.model)
    scorer = OnlineScorer(cfg.model, cfg.warehouse, redis=a.redis)
    with open(a.items) as f:
        records = json.load(f)
    print(json.dumps(scorer.score(a.user_id, items_from_records(records, scorer.spec)).to_dict()))
    return 0


def cmd_score_stage(a: argparse.Namespace) -> int:
    from jobs.score_stage import run_score_stage

    run_score_stage(*_spark_job(a), a.ds, compute_missing=a.compute_missing)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from jobs.run_day import run_day

    run_day(*_spark_job(a), a.ds, compute_missing=a.compute_missing)
    return 0


def cmd_baseline(a: argparse.Namespace) -> int:
    from jobs.baseline import run_baseline

    run_baseline(*_spark_job(a), a.ds, ckpt=a.baseline_model)
    return 0


def _print_top(spark, cfg, ds: str, users: int, top: int) -> None:
    from jobs.report import top_items

    for user_id, items in top_items(spark, cfg, ds, users, top).items():
        print(f"user {user_id}: " + ", ".join(f"item {i} ({s:.3f})" for i, s in items))


def cmd_show(a: argparse.Namespace) -> int:
    spark, cfg = _spark_job(a)
    _print_top(spark, cfg, a.ds, a.users, a.top)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """generate + run + show in one Spark session (one JVM start instead of three)."""
    from jobs.generate import generate_tables
    from jobs.run_day import run_day

    spark, cfg = _spark_job(a)
    print(json.dumps(generate_tables(spark, cfg, a.ds, a.users, mean_cands=a.mean_candidates)), flush=True)
    run_day(spark, cfg, a.ds)
    _print_top(spark, cfg, a.ds, 3, 5)
    return 0


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ds", required=True, help="the day to process, YYYY-MM-DD")
    p.add_argument("--config", default="job.toml", help="job config (TOML); default: ./job.toml")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="extra Spark setting, e.g. --conf spark.master=local[4] (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ugsep",
        description="Batch scoring for UG-Sep ranking models: train, encode users once, score groups.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and save a checkpoint",
                       description="Train rankmixer or ugsep; the last stdout line is a JSON report.")
    _add_dataset_args(t)
    t.add_argument("--arch", choices=("rankmixer", "ugsep"), default="ugsep")
    t.add_argument("--compensation", action=argparse.BooleanOptionalAction, default=True,
                   help="information compensation for the masked user-item interaction (ugsep)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=512)
    t.add_argument("--d-model", type=int, default=64)
    t.add_argument("--user-tokens", type=int, default=4)
    t.add_argument("--group-tokens", type=int, default=4)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split",
                       description="Print the same JSON report as train for a saved checkpoint.")
    e.add_argument("--ckpt", required=True)
    _add_dataset_args(e)
    e.add_argument("--seed", type=int, default=0, help="dataset seed (must match training)")
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("quantize", help="write a quantized checkpoint (W8A16 user side, FP8 item side)",
                       description="Quantize a checkpoint: int8 weights with 16-bit activations for the user "
                                   "side, FP8 E4M3 for the item side (calibrated layers may stay float).")
    q.add_argument("--ckpt", required=True)
    q.add_argument("--mode", choices=("w8a16", "fp8", "w8a16+fp8"), default="w8a16+fp8")
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
    s.add_argument("--batch-users", type=int, default=256, help="users per model call")
    s.set_defaults(func=cmd_score_local)

    jobs = [
        ("generate", cmd_generate, "write a synthetic day into the input Delta tables",
         "Write candidates for --ds (replacing that day) and snapshot the user/item feature tables."),
        ("user-stage", cmd_user_stage, "encode the day's users once; write user_state",
         "Distinct users of the day -> user features -> encode_users on Arrow batches -> user_state."),
        ("score-stage", cmd_score_stage, "score every user's candidates from user_state; write scores",
         "Candidates -> item features -> one group per user -> join user_state -> score_groups -> scores."),
        ("run", cmd_run, "user stage then score stage for one day", "Both stages for --ds, one summary."),
        ("baseline-score", cmd_baseline, "naive one-stage scoring with predict_batch_udf (for comparison)",
         "Join everything per candidate and run the full model per candidate; writes baseline_scores."),
        ("show", cmd_show, "print the top items of a few users from the scores table",
         "Read scores for --ds and print the best items of the first users."),
        ("materialize", cmd_materialize, "load a day's user_state (and user features) into the online store",
         "Write user_state of --ds and the user feature snapshot to Feast's online store, in batches."),
        ("demo", cmd_demo, "generate a synthetic day, run both stages, show top items",
         "What `make demo` runs after training: generate + run + show in one Spark session."),
    ]
    for name, func, help_, desc in jobs:
        j = sub.add_parser(name, help=help_, description=desc)
        _add_job_args(j)
        if name in ("generate", "demo"):
            j.add_argument("--users", type=int, default=2000, help="users in the day")
            j.add_argument("--mean-candidates", type=float, default=40.0, help="mean candidates per user")
        if name in ("score-stage", "run"):
            j.add_argument("--compute-missing", action="store_true",
                           help="encode users without user_state on the fly instead of failing")
        if name in ("user-stage", "score-stage", "run", "demo"):
            j.add_argument("--model", help="checkpoint directory (overrides the config's model)")
        if name in ("user-stage", "materialize"):
            j.add_argument("--redis", help="host:port of a Redis online store (default: SQLite, or $UGSEP_REDIS)")
        if name == "user-stage":
            j.add_argument("--materialize", action="store_true", help="then load the state into the online store")
        if name == "materialize":
            j.add_argument("--batch-rows", type=int, default=20000, help="users per online-store write")
            j.add_argument("--force", action="store_true",
                           help="write the day even if the online store holds a later day's user_state")
        if name == "baseline-score":
            j.add_argument("--baseline-model", help="checkpoint for the baseline (default: the config's model)")
        if name == "show":
            j.add_argument("--users", type=int, default=3)
            j.add_argument("--top", type=int, default=5)
        j.set_defaults(func=func)

    f = sub.add_parser("features", help="Feast repository commands",
                       description="Register the ugsep Feast objects (entity user, feature views).")
    f.add_argument("action", choices=("apply",))
    f.add_argument("--config", default="job.toml", help="job config (TOML); default: ./job.toml")
    f.add_argument("--redis", help="host:port of a Redis online store (default: SQLite, or $UGSEP_REDIS)")
    f.set_defaults(func=cmd_features)

    b = sub.add_parser("backfill", help="run `ugsep run` for a range of days",
                       description="Run days in order (or --parallel K at a time); stop after a failure with "
                                   "a summary; --skip-done skips days already complete for this model version.")
    b.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    b.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    b.add_argument("--parallel", type=int, default=1, help="days run at once in one Spark session")
    b.add_argument("--skip-done", action="store_true", help="skip days whose run is complete for this model")
    b.add_argument("--config", default="job.toml", help="job config (TOML); default: ./job.toml")
    b.add_argument("--model", help="checkpoint directory (overrides the config's model)")
    b.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="extra Spark setting, e.g. --conf spark.master=local[4] (repeatable)")
    b.set_defaults(func=cmd_backfill)

    o = sub.add_parser("serve-score", help="score one user's candidates online from the feature store",
                       description="Fetch the user's state from the online store (or compute it from the "
                                   "user's features) and score the candidates in --items; prints JSON.")
    o.add_argument("--user-id", type=int, required=True)
    o.add_argument("--items", required=True, help="JSON file: a list of candidate objects with item fields")
    o.add_argument("--config", default="job.toml", help="job config (TOML); default: ./job.toml")
    o.add_argument("--model", help="checkpoint directory (overrides the config's model)")
    o.add_argument("--redis", help="host:port of a Redis online store (default: SQLite, or $UGSEP_REDIS)")
    o.set_defaults(func=cmd_serve_score)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyError as e:  # str() of a KeyError is only the key
        print(f"ugsep {args.command}: error: missing key {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"ugsep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
