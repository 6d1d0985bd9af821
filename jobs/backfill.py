"""`ugsep backfill`: run a range of days in order (or K at a time), skip finished days on
request, show progress with an ETA, and stop with a clear account when a day fails."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from jobs.config import JobConfig, parse_ds


def day_range(start: str, end: str) -> list[str]:
    a, b = dt.date.fromisoformat(parse_ds(start, "--start")), dt.date.fromisoformat(parse_ds(end, "--end"))
    if b < a:
        raise ValueError(f"--end {end} is before --start {start}")
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def day_is_done(cfg: JobConfig, ds: str, model_version: str, last_scores_commit: Callable[[str], int | None]) -> bool:
    """A day is done when its `ugsep run` summary is of this model version, accounts for every
    candidate (scored or quarantined), and its scores commit is still the scores table's latest
    commit for the day (``last_scores_commit(ds)``): a later run that wrote the day and then failed
    before its own summary leaves the old summary, which then no longer describes the table.
    A day recorded empty by `--allow-empty` is done."""
    path = cfg.summary_path("run", ds)
    if not path.exists():
        return False
    s = json.loads(path.read_text())
    if s.get("model_version") != model_version:
        return False
    if s.get("empty_day"):
        return True
    accounted = s["rows_out"] + s["rows_quarantined"] == s["rows_in"]
    return accounted and s.get("commits", {}).get("scores") == last_scores_commit(ds)


@dataclass
class BackfillReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run

    def line(self) -> str:
        return (f"backfill: {len(self.done)} done, {len(self.skipped)} skipped (already done), "
                f"{len(self.failed)} failed {sorted(self.failed)}, {len(self.not_run)} not run {self.not_run}")


def backfill(days: list[str], run_day: Callable[[str], dict], is_done: Callable[[str], bool] = lambda d: False,
             parallel: int = 1) -> BackfillReport:
    """Run ``run_day(ds)`` for each day, ``parallel`` at a time (a new day starts as soon as one
    ends); after the first failure no new day starts."""
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    report = BackfillReport()
    todo = []
    for ds in days:
        (report.skipped if is_done(ds) else todo).append(ds)
    t0 = time.perf_counter()

    def progress() -> None:
        finished = len(report.done)
        left = len(todo) - finished - len(report.failed)
        eta = f"ETA {(time.perf_counter() - t0) / finished * left:,.0f}s" if finished else "ETA unknown"
        print(f"[backfill] {finished}/{len(todo)} days done, {left} left, {eta}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        pending, queue = {}, list(todo)
        while queue or pending:
            while queue and len(pending) < parallel and not report.failed:
                ds = queue.pop(0)
                pending[pool.submit(run_day, ds)] = ds
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                ds = pending.pop(fut)
                if fut.exception() is not None:
                    report.failed[ds] = f"{type(fut.exception()).__name__}: {fut.exception()}"
                else:
                    report.done.append(ds)
                progress()
            if report.failed:
                report.not_run.extend(queue)
                queue.clear()
    report.done.sort()
    return report
