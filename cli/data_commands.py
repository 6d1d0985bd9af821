"""Data commands (Spark): import a public dataset into the input tables, evaluate scored days against labels."""

from __future__ import annotations

import argparse
import json

from cli.common import config_options, day_option, job_config, parent, spark_job, spark_options, start_spark


def cmd_import(a: argparse.Namespace) -> int:
    from jobs.importers import movielens_tables, write_import

    tables = movielens_tables(a.data_dir)  # bad files fail before Spark starts
    cfg = job_config(a)
    print(json.dumps(write_import(start_spark(a, cfg), cfg, tables)))
    return 0


def cmd_evaluate_day(a: argparse.Namespace) -> int:
    from jobs.config import parse_ds
    from jobs.evaluate import evaluate_days

    parse_ds(a.ds)  # both days checked before Spark starts
    end = parse_ds(a.end, "--end") if a.end else a.ds
    if end < a.ds:
        raise ValueError(f"--end {end} is before --ds {a.ds}")
    evaluate_days(*spark_job(a), a.ds, end)  # prints its one line
    return 0


def register(sub) -> None:
    spark_cmd = parent(config_options, spark_options)
    p = sub.add_parser("import", parents=[spark_cmd],
                       help="write a dataset's files into the model's input tables and labels",
                       description="Read MovieLens-100k format files (u.data, u.user, u.item) and overwrite "
                                   "user_features, item_features, candidates (each rating a candidate on the UTC "
                                   "day of its timestamp) and labels (rating >= 4), where the job config says. "
                                   "A malformed line fails, naming file and line, before anything is written.")
    p.add_argument("source", choices=("movielens",), help="the dataset's file format")
    p.add_argument("--data-dir", required=True, help="folder holding u.data, u.user, u.item")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("evaluate-day", parents=[parent(day_option), spark_cmd],
                       help="AUC, UAUC, log loss and calibration of a day's scores against the labels",
                       description="Join scores with labels on (ds, user_id, item_id) for --ds (through --end "
                                   "if given); print one line, write warehouse/_summaries/evaluate_<days>.json.")
    p.add_argument("--end", help="last day, YYYY-MM-DD (inclusive; default: --ds)")
    p.set_defaults(func=cmd_evaluate_day)
