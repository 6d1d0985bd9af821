"""Job summaries: one printed line and a JSON file next to the tables."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobs.run_report import replacing, write_report

HOOKS = ("progress", "progress_every", "retries")  # not part of the summary itself


@dataclass
class JobSummary:
    job: str
    ds: str
    unit: str = "candidates"  # what rows_in counts: "candidates" or "users"
    model_version: str = ""
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0  # of rows_in's unit
    users_quarantined: int = 0  # `run`: users the user stage quarantined (their candidates are in rows_quarantined)
    users: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    unknown_categorical: dict[str, int] = field(default_factory=dict)
    users_computed_on_the_fly: int = 0
    events: dict[str, int | dict[str, int]] = field(default_factory=dict)  # sequence models: what became of events
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str = ""  # tags the job's Delta commits (userMetadata)
    commits: dict[str, int] = field(default_factory=dict)  # table -> Delta version of this run's commit for ds
    empty_day: bool = False  # recorded by `backfill --allow-empty` for a day with no candidates
    tasks_retried: int = 0  # failed task attempts (a lost executor, a crashed Python worker) Spark ran again
    executors_lost: list[str] = field(default_factory=list)  # "id: reason" of executors lost while the job ran
    # while a step runs, a line every ``progress_every`` seconds with what ``progress`` says (if anything)
    progress: Callable[[], str | None] | None = field(default=None, repr=False, compare=False)
    progress_every: float = field(default=30.0, repr=False, compare=False)
    # read when the summary is emitted: (tasks_retried, executors_lost), ``jobs.spark_progress.retries_of``
    retries: Callable[[], tuple[int, list[str]]] | None = field(default=None, repr=False, compare=False)

    @contextmanager
    def timed(self, step: str):
        """Time a step and print a progress line when it starts, while it runs and when it ends."""
        label = f"[{self.job} {self.ds}] {step}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(label, t0, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
        self.seconds[step] = round(time.perf_counter() - t0, 3)
        print(f"{label} done in {self.seconds[step]:.1f}s", file=sys.stderr, flush=True)

    def _heartbeat(self, label: str, t0: float, stop: threading.Event) -> None:
        while not stop.wait(self.progress_every):
            try:
                said = self.progress() if self.progress else None
            except Exception:  # noqa: BLE001 (a progress line must never fail the job)
                said = None
            print(f"{label}: {time.perf_counter() - t0:.0f}s" + (f", {said}" if said else ""),
                  file=sys.stderr, flush=True)

    def _retried(self) -> str:
        lost = f" executors_lost={len(self.executors_lost)}" if self.executors_lost else ""
        return f" tasks_retried={self.tasks_retried}{lost}" if self.tasks_retried or lost else ""

    @property
    def total_seconds(self) -> float:
        return round(sum(self.seconds.values()), 3)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in HOOKS}
        d["total_seconds"] = self.total_seconds
        d[f"{self.unit}_per_s"] = round(self.rows_in / self.total_seconds, 1) if self.total_seconds else 0.0
        return d

    def emit(self, path: Path, scores: dict | None = None, drawn_png: Path | None = None) -> dict:
        """Write the summary JSON at ``path`` and the run report next to it; print one line.
        ``scores``: the day's score distribution (``jobs.report.observe_score_distribution``) for scoring jobs;
        ``drawn_png``: its histogram as another job of the run drew it."""
        if self.retries is not None:
            try:
                self.tasks_retried, self.executors_lost = self.retries()
            except OSError as e:  # the job is done: an unreadable status API must not fail it
                print(f"[{self.job} {self.ds}] task retries unknown: {e}", file=sys.stderr, flush=True)
        d = {**self.to_dict(), **(scores or {})}
        path.parent.mkdir(parents=True, exist_ok=True)
        report = write_report(d, path, drawn_png)
        with replacing(path) as tmp:  # last: backfill takes the JSON as the mark of a finished day
            tmp.write_text(json.dumps(d, indent=2))
        print(f"{self.job} ds={self.ds} rows_in={self.rows_in} rows_out={self.rows_out} "
              f"quarantined={self.rows_quarantined} users={self.users} seconds={self.total_seconds} "
              f"{self.unit}/s={d[self.unit + '_per_s']:,}{self._retried()} summary={path} report={report}", flush=True)
        return d
