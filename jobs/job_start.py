"""What every model job does first: validate ds, load the model, create its output tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from jobs.config import parse_ds
from jobs.contracts import TableContract
from jobs.delta_io import ensure_table
from jobs.spark_progress import stage_progress
from jobs.summary import JobSummary
from ugsep.checkpoint import load_checkpoint
from ugsep.model import RankingModel


@dataclass
class JobStart:
    ds: str
    model: RankingModel
    version: str
    summary: JobSummary
    run_id: str  # tags this job's Delta commits (userMetadata)


def start_job(spark: SparkSession, job: str, ds: str, ckpt: str, outputs: list[tuple[TableContract, str]],
              unit: str = "candidates", stale_summaries: tuple[Path, ...] = ()) -> JobStart:
    """``stale_summaries``: summary files that stop describing the day once this job writes to it,
    deleted first, so a rerun that fails halfway does not leave the last run's mark of a done day."""
    ds = parse_ds(ds)
    for path in stale_summaries:
        path.unlink(missing_ok=True)
    summary = JobSummary(job, ds, unit=unit, progress=stage_progress(spark))
    with summary.timed("start"):  # counted in the job's seconds and throughput like any step
        model, version = load_checkpoint(ckpt)
        for contract, path in outputs:
            ensure_table(spark, contract, path)
    summary.model_version = version
    return JobStart(ds, model, version, summary, f"{job}-{ds}-{uuid.uuid4().hex[:8]}")
