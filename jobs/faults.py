"""Fault injection for tests, through one environment variable read here only.

``UGSEP_TEST_FAULTS`` holds comma-separated faults:

    worker-exit-once=PATH   the first model worker that finds no file at PATH creates it and
                            exits (a crashed Python worker: Spark retries its task)
    fail-day=YYYY-MM-DD     `ugsep run` fails for that day before reading anything (repeatable)
    score-hold-once=PATH    the first score-stage worker that finds no file at PATH writes its pid
                            there and waits (up to HOLD_SECONDS) before scoring: a test kills its
                            executor meanwhile
    score-hold-at-end-once=PATH  the same, after the worker's last batch went to the writer: the
                            task's files are written but not committed

Job configs cannot set faults; without the variable no fault hook does anything. The driver
reads the variable and hands the worker's share to it in the task closure, so it works on
any cluster manager.
"""

from __future__ import annotations

import os
import time

ENV = "UGSEP_TEST_FAULTS"


def _faults() -> list[tuple[str, str]]:
    spec = os.environ.get(ENV, "")
    return [tuple(f.split("=", 1)) for f in spec.split(",") if "=" in f]


def worker_exit_marker() -> str:
    """The marker path of a ``worker-exit-once`` fault ("" when none is set)."""
    return next((v for k, v in _faults() if k == "worker-exit-once"), "")


def score_holds() -> tuple[str, str]:
    """The marker paths of the ``score-hold-once`` and ``score-hold-at-end-once`` faults ("" when unset)."""
    faults = dict(_faults())
    return faults.get("score-hold-once", ""), faults.get("score-hold-at-end-once", "")


HOLD_SECONDS = 120.0


def hold_once(marker: str) -> None:
    """In a worker: the first process that finds no file at ``marker`` writes its pid there and
    waits up to HOLD_SECONDS; it exits as soon as its parent (Spark's worker daemon) is gone."""
    if not marker or os.path.exists(marker):
        return
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)  # whole, for the test that polls for it
    parent, deadline = os.getppid(), time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.1)


def check_day(ds: str) -> None:
    """Raise for a day named by a ``fail-day`` fault."""
    if ("fail-day", ds) in _faults():
        raise RuntimeError(f"injected failure for ds={ds} ({ENV})")


def exit_once(marker: str) -> None:
    """In a worker: the first process that finds no file at ``marker`` creates it and exits."""
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(17)
