"""What the command groups share: parent parsers for common options, config and session helpers.

Heavy imports (torch, Spark) happen inside the commands, so ``ugsep --help`` is instant.
"""

from __future__ import annotations

import argparse


def parent(*adders) -> argparse.ArgumentParser:
    """A parent parser (``parents=[...]``) holding the options the ``adders`` add."""
    p = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(p)
    return p


def config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="job.toml", help="job config (TOML); default: ./job.toml")


def spark_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", action="append", metavar="KEY=VALUE",
                   help="extra Spark setting, e.g. --conf spark.master=local[4] (repeatable)")
    p.add_argument("--verbose", action="store_true",
                   help="show Spark's own output (Ivy resolution, JVM warnings) instead of writing it to the log")


def day_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ds", required=True, help="the day to process, YYYY-MM-DD")


def model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (overrides the config's model)")


def redis_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", help="host:port of a Redis online store (default: the config's redis, "
                                   "else $UGSEP_REDIS, else SQLite)")


def dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("synthetic", "movielens-100k"), default="synthetic",
                   help="data: a seeded synthetic day, or MovieLens-100k format files")
    p.add_argument("--data-dir", help="folder holding u.data, u.user, u.item (movielens-100k)")
    p.add_argument("--seed", type=int, default=0, help="dataset (and training) seed")


def job_config(a: argparse.Namespace):
    """The job config with the command line's --model and --conf applied."""
    from jobs.config import load_config, spark_conf_pairs

    cfg = load_config(a.config, model=getattr(a, "model", None))
    cfg.spark.update(spark_conf_pairs(getattr(a, "conf", None) or []))
    return cfg


def start_spark(a: argparse.Namespace, cfg):
    """Start (or join) the Spark session for a command; quiet unless --verbose."""
    from jobs.spark_session import build_spark

    return build_spark(f"ugsep-{a.command}", cfg.spark, quiet=not getattr(a, "verbose", False))


def require_online_store(cfg, redis: str | None) -> None:
    """Fail fast (OnlineStoreError) when the Redis online store a command will write does not answer."""
    from feature_store.store import check_online_store, repo_config

    check_online_store(repo_config(cfg.warehouse, redis or cfg.redis or None))


def spark_job(a: argparse.Namespace):
    """Validate --ds, load the job config and start the session: (spark, cfg). A command that
    will write the online store (materialize, --materialize) first checks that it answers."""
    from jobs.config import parse_ds

    parse_ds(a.ds)  # fail before Spark starts
    cfg = job_config(a)
    if a.command == "materialize" or getattr(a, "materialize", False):
        require_online_store(cfg, getattr(a, "redis", None))
    return start_spark(a, cfg), cfg
