"""`ugsep run`: the user stage, then the score stage, for one ds; one combined summary."""

from __future__ import annotations

import sys

from pyspark.sql import SparkSession

from jobs import score_stage, user_stage
from jobs.config import JobConfig, parse_ds
from jobs.delta_io import ensure_table
from jobs.faults import check_day
from jobs.job_start import require_inputs
from jobs.materialize import materialize_day
from jobs.report import SCORE_DISTRIBUTION_KEYS
from jobs.run_report import report_paths
from jobs.score_stage import cached_day, run_score_stage
from jobs.summary import JobSummary
from jobs.user_stage import run_user_stage
from jobs.validation import EmptyDayError
from ugsep.checkpoint import checkpoint_info, read_spec


def ensure_run_tables(spark: SparkSession, cfg: JobConfig) -> None:
    """Create (or bring up to date) the tables `ugsep run` writes, before days run side by side:
    two days creating or altering one Delta table at once conflict, and one of them fails."""
    require_inputs(spark, cfg, read_spec(cfg.model))
    for contract in dict.fromkeys(user_stage.OUTPUTS + score_stage.OUTPUTS):
        ensure_table(spark, contract, cfg.table_path(contract))


def run_day(spark: SparkSession, cfg: JobConfig, ds: str, compute_missing: bool = False,
            materialize: bool = False, redis: str | None = None, allow_empty: bool = False) -> dict:
    """The daily pipeline on one cached read of the day's candidates: the user stage, with
    ``materialize`` the online store load (as the Airflow DAG's middle task), the score stage.
    ``allow_empty``: a day without candidates is recorded as done with zero rows (its tables are
    left as they are) instead of failing."""
    ds = parse_ds(ds)
    check_day(ds)
    try:
        return _run_day(spark, cfg, ds, compute_missing, materialize, redis)
    except EmptyDayError:
        if not allow_empty:
            raise
        summary = JobSummary("run", ds, model_version=checkpoint_info(cfg.model).version, empty_day=True)
        print(f"run ds={ds}: no candidates; recorded as an empty day (--allow-empty)", file=sys.stderr, flush=True)
        return summary.emit(cfg.summary_path("run", ds))


def _run_day(spark: SparkSession, cfg: JobConfig, ds: str, compute_missing: bool, materialize: bool,
             redis: str | None) -> dict:
    with cached_day(spark, cfg, ds, read_spec(cfg.model)) as day:  # one read and validation for both stages
        user = run_user_stage(spark, cfg, ds, day.per_user)
        if materialize:
            materialize_day(spark, cfg, ds, redis=redis)
        score = run_score_stage(spark, cfg, ds, compute_missing=compute_missing, day=day)
    summary = JobSummary(
        "run", ds, model_version=score["model_version"], rows_in=score["rows_in"], rows_out=score["rows_out"],
        rows_quarantined=score["rows_quarantined"], users_quarantined=user["rows_quarantined"], users=score["users"],
        quarantine_reasons={**{f"user:{k}": v for k, v in user["quarantine_reasons"].items()},
                            **{f"score:{k}": v for k, v in score["quarantine_reasons"].items()}},
        unknown_categorical={**user["unknown_categorical"], **score["unknown_categorical"]},
        users_computed_on_the_fly=score["users_computed_on_the_fly"], events=user["events"],
        run_id=score["run_id"], commits={**user["commits"], **score["commits"]},
        tasks_retried=user["tasks_retried"] + score["tasks_retried"],
        executors_lost=sorted(set(user["executors_lost"]) | set(score["executors_lost"])),
        seconds={**{f"user-stage/{k}": v for k, v in user["seconds"].items()},
                 **{f"score-stage/{k}": v for k, v in score["seconds"].items()}},
    )
    return summary.emit(cfg.summary_path("run", ds), {k: score[k] for k in SCORE_DISTRIBUTION_KEYS},
                        drawn_png=report_paths(cfg.summary_path("score-stage", ds))[1])
