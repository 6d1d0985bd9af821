"""A progress line for long Spark steps: what the active stages have done so far."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession


def stage_progress(spark: SparkSession) -> Callable[[], str | None]:
    """A function that describes the tasks done in Spark's active stages (None when none runs),
    for ``JobSummary.timed`` to print while a step runs."""
    tracker = spark.sparkContext.statusTracker()

    def describe() -> str | None:
        stages = [s for s in map(tracker.getStageInfo, tracker.getActiveStageIds()) if s is not None]
        if not stages:
            return None
        done, total = sum(s.numCompletedTasks for s in stages), sum(s.numTasks for s in stages)
        return f"{done}/{total} tasks of {len(stages)} active stage(s) done"

    return describe
