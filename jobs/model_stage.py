"""Runs a worker function over a DataFrame with mapInArrow, on the GPU Spark assigned if any."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from pyspark.sql import DataFrame

from jobs.config import JobConfig
from jobs.faults import worker_exit_marker


def _resource_profile(cfg: JobConfig):
    """Stage-level scheduling: ask for ``task_gpus`` per task in the model stage only."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", cfg.task_gpus)).build


ARROW_BATCH_ROWS = 10_000  # Spark's default spark.sql.execution.arrow.maxRecordsPerBatch


def arrow_batch_rows(cfg: JobConfig) -> int:
    """Rows per Arrow batch for every model stage of a config: Spark's default or the score
    stage's per-call cap if larger (smaller batches cost more CPU per row). The setting is
    session-wide, so stages of days run at once (`backfill --parallel`) must all set one value;
    the workers cut the batches into model calls themselves."""
    return max(cfg.max_candidates_per_call, ARROW_BATCH_ROWS)


def map_in_arrow_with_model(df: DataFrame, worker: Callable, schema: pa.Schema, cfg: JobConfig,
                            ckpt: str) -> DataFrame:
    """``worker(batches, ckpt, device, exit_marker)`` runs in each Python worker on Arrow batches
    of ``arrow_batch_rows(cfg)`` rows; the device is picked there from the task's GPU assignment
    (TaskContext), so no CUDA touches the driver."""
    setting, marker = cfg.device, worker_exit_marker()  # read on the driver, shipped in the closure

    def run(batches):
        import torch
        from pyspark import TaskContext

        from jobs.workers import pick_device

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        torch.set_num_threads(ctx.cpus() if ctx is not None else 1)  # one task's share, no oversubscription
        yield from worker(batches, ckpt, pick_device(setting, gpus.addresses if gpus else None), marker)

    df.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch_rows(cfg)))
    # Batches are bounded by rows. Int.MaxValue bytes turns off Spark's byte check, which sums
    # every column's buffer sizes after each row.
    df.sparkSession.conf.set("spark.sql.execution.arrow.maxBytesPerBatch", str(2**31 - 1))
    ddl = ", ".join(f"{f.name} {_ddl(f.type)}" for f in schema)
    is_local = df.sparkSession.sparkContext.master.startswith("local")
    if cfg.task_gpus > 0 and not is_local:
        return df.mapInArrow(run, ddl, profile=_resource_profile(cfg))
    return df.mapInArrow(run, ddl)


def _ddl(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"array<{_ddl(t.value_type)}>"
    return {pa.int64(): "bigint", pa.int32(): "int", pa.float32(): "float", pa.float64(): "double",
            pa.string(): "string"}[t]
