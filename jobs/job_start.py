"""What every model job does first: validate ds, check the checkpoint, create its output tables.

The driver never builds the model: it reads the checkpoint's spec and version from its config
and hashes its weights once per file version (``ugsep run`` starts two stages on one file).
The Python workers load the model themselves and check they got the same version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pyspark.sql import SparkSession

from jobs.config import JobConfig, parse_ds
from jobs.contracts import TableContract, input_contracts
from jobs.delta_io import ensure_table, require_table
from jobs.spark_progress import retries_of, stage_progress
from jobs.summary import JobSummary
from ugsep.checkpoint import WEIGHTS, checkpoint_info, verify_checkpoint
from ugsep.features import FeatureSpec


@dataclass
class JobStart:
    ds: str
    spec: FeatureSpec  # the checkpoint's feature spec
    version: str
    summary: JobSummary
    run_id: str  # tags this job's Delta commits (userMetadata)


def start_job(spark: SparkSession, cfg: JobConfig, job: str, ds: str, ckpt: str,
              outputs: list[tuple[TableContract, str]], unit: str = "candidates") -> JobStart:
    """Check the checkpoint and that the model's input tables exist, then create the job's output
    tables if needed: a mistyped warehouse fails here and gets no empty tables. The day's earlier
    summaries stay until this job's own replace them (after its data commit)."""
    ds = parse_ds(ds)
    run_id = f"{job}-{ds}-{uuid.uuid4().hex[:8]}"
    summary = JobSummary(job, ds, unit=unit, progress=stage_progress(spark), run_id=run_id,
                         retries=retries_of(spark, run_id))
    with summary.timed("start"):  # counted in the job's seconds and throughput like any step
        spec, version = checked_checkpoint(ckpt)
        require_inputs(spark, cfg, spec)
        for contract, path in outputs:
            ensure_table(spark, contract, path)
    summary.model_version = version
    return JobStart(ds, spec, version, summary, run_id)


def require_inputs(spark: SparkSession, cfg: JobConfig, spec: FeatureSpec) -> None:
    """Every input table of the model is where the job config says (a ContractError otherwise)."""
    for name in input_contracts(spec):
        require_table(spark, cfg.source(name),
                      f"; nothing was written (is the warehouse or [tables.{name}] in the job config right?)")


def checked_checkpoint(ckpt: str) -> tuple[FeatureSpec, str]:
    """The checkpoint's (spec, model_version), its weights verified against the version."""
    info = checkpoint_info(ckpt)
    weights = Path(ckpt).resolve() / WEIGHTS
    stat = weights.stat() if weights.exists() else None
    _verified(str(Path(ckpt).resolve()), stat and (stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return info.spec, info.version


@lru_cache(maxsize=8)
def _verified(ckpt: str, file_version: tuple[int, int, int] | None) -> str:
    return verify_checkpoint(ckpt)
