"""Fault injection for tests, through one environment variable read here only.

``UGSEP_TEST_FAULTS`` holds comma-separated faults:

    worker-exit-once=PATH   the first model worker that finds no file at PATH creates it and
                            exits (a crashed Python worker: Spark retries its task)
    fail-day=YYYY-MM-DD     `ugsep run` fails for that day before reading anything (repeatable)

Job configs cannot set faults; without the variable no fault hook does anything. The driver
reads the variable and hands the worker's share to it in the task closure, so it works on
any cluster manager.
"""

from __future__ import annotations

import os

ENV = "UGSEP_TEST_FAULTS"


def _faults() -> list[tuple[str, str]]:
    spec = os.environ.get(ENV, "")
    return [tuple(f.split("=", 1)) for f in spec.split(",") if "=" in f]


def worker_exit_marker() -> str:
    """The marker path of a ``worker-exit-once`` fault ("" when none is set)."""
    return next((v for k, v in _faults() if k == "worker-exit-once"), "")


def check_day(ds: str) -> None:
    """Raise for a day named by a ``fail-day`` fault."""
    if ("fail-day", ds) in _faults():
        raise RuntimeError(f"injected failure for ds={ds} ({ENV})")


def exit_once(marker: str) -> None:
    """In a worker: the first process that finds no file at ``marker`` creates it and exits."""
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(17)
