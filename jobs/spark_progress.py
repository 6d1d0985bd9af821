"""What Spark did for a job: a progress line for long steps, the task attempts it retried."""

from __future__ import annotations

import json
import urllib.request
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


def retries_of(spark: SparkSession, group: str) -> Callable[[], tuple[int, list[str]]]:
    """Tag the jobs this thread starts from now on with ``group`` (a run id) and return a
    function that tells (failed task attempts of those jobs, executors lost since this call,
    as "id: reason"). Spark re-ran every failed attempt of a job that finished: these are the
    retries a summary reports. Read from the driver's status API (the web UI's REST endpoints);
    without a UI (spark.ui.enabled=false) both are unknown and reported as (0, [])."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)

    def rest(path: str) -> list[dict]:
        if not sc.uiWebUrl:
            return []
        url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def lost() -> dict[str, str]:
        return {e["id"]: e.get("removeReason", "") for e in rest("allexecutors") if not e.get("isActive", True)}

    before = set(lost())

    def tally() -> tuple[int, list[str]]:
        failed = sum(j.get("numFailedTasks", 0) for j in rest("jobs") if j.get("jobGroup") == group)
        return failed, [f"{i}: {why}" for i, why in lost().items() if i not in before]

    return tally
