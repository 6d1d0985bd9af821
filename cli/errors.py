"""The CLI's one error boundary: the known failure families, their exit codes, and the one line
that explains a failure.

``cli.main.main`` runs every command inside it: an exception that escapes a command becomes one
line on stderr, ``ugsep <command>: error: <what is wrong and what to do>``, and the exit code of
its family. ``ugsep --debug COMMAND ...`` (or ``--debug`` after the command) re-raises instead,
with the traceback. Argument errors are argparse's own (usage, then one error line, exit 2).

    code  family            exceptions
    0     success
    1     unexpected        anything not below (a bug, or a failure not classified yet)
    2     bad input         ValueError, FileNotFoundError, KeyError, bad arguments, ClusterError
    3     checkpoint        CheckpointError, SplitInferenceError, StateVersionError
    4     tables            ContractError, Spark's AnalysisException
    5     data not ready    EmptyDayError, UserStateError, UnknownUserError, SequenceFeaturesError
    6     concurrent write  DayConflictError, Delta's concurrent-modification exceptions
    7     feature store     Feast objects not registered, Redis unreachable, no online table, other Feast errors
    130   interrupted       Ctrl-C

Types are named as ``"module:Class"`` and looked up only in modules already imported (an
exception of a class can only exist once its module is), so explaining an error never imports
torch, Spark or Feast. The most specific class wins: for each class along the exception's MRO,
the first family that names it.
"""

from __future__ import annotations

import re
import sys
from typing import NamedTuple


class Family(NamedTuple):
    types: tuple[str, ...]  # "module:Class"; subclasses match too, the most specific class wins
    code: int  # the exit code
    name: str  # the family, as the README's table names it
    hint: str  # the message: {msg} is the first line of the exception's text, {type} its class name,
    #            {where} " at host:port" when the text names one (Redis)


CONCURRENT = ("the day is being written by another run ({msg}); nothing of this run was committed; "
              "rerun after the other run finishes")
DELTA_CONFLICTS = ("DeltaConcurrentModificationException", "ConcurrentAppendException",
                   "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException", "MetadataChangedException",
                   "ProtocolChangedException", "ConcurrentTransactionException", "ConcurrentWriteException")

FAMILIES: list[Family] = [
    Family(("builtins:KeyError",), 2, "bad input", "missing key {msg}"),  # str() of a KeyError is only the key
    Family(("builtins:ValueError", "builtins:FileNotFoundError", "serving.online_scorer:ItemFieldError",
            "jobs.cluster:ClusterError"),
           2, "bad input", "{msg}"),
    Family(("ugsep.checkpoint:CheckpointError", "ugsep.model:SplitInferenceError",
            "serving.online_scorer:StateVersionError"), 3, "checkpoint", "{msg}"),
    Family(("jobs.delta_io:ContractError",), 4, "tables", "{msg}"),
    Family(("pyspark.errors:AnalysisException",), 4, "tables",
           "Spark cannot read or write a table: {msg} (are the job config's warehouse and [tables] right?)"),
    Family(("jobs.validation:EmptyDayError", "jobs.score_stage:UserStateError",
            "serving.online_scorer:SequenceFeaturesError"), 5, "data not ready", "{msg}"),
    Family(("serving.online_scorer:UnknownUserError",), 5, "data not ready",
           "{msg} (is the user id right? `ugsep materialize --ds DAY` loads a day's users)"),
    Family(("jobs.delta_io:DayConflictError",), 6, "concurrent write", "{msg}"),  # its text says all of CONCURRENT
    Family(tuple(f"delta.exceptions:{n}" for n in DELTA_CONFLICTS), 6, "concurrent write", CONCURRENT),
    Family(("feast.errors:FeastObjectNotFoundException", "feast.errors:ProjectNotFoundException"),
           7, "feature store", "{msg}: run `ugsep features apply` for this warehouse (same --config) first"),
    Family(("feature_store.store:OnlineStoreError", "serving.state_reader:OnlineStoreLayoutError"), 7,
           "feature store", "{msg}"),
    Family(("redis.exceptions:ConnectionError", "redis.exceptions:TimeoutError"), 7, "feature store",
           "the Redis online store{where} is unreachable ({msg}); is redis-server running?"),
    Family(("feast.errors:FeastError",), 7, "feature store", "feature store: {msg}"),
    Family(("builtins:KeyboardInterrupt",), 130, "interrupted", "interrupted"),
]
UNEXPECTED = Family((), 1, "unexpected", "unexpected {type}: {msg}; rerun with --debug for the traceback")

# Delta's conflicts, by their Java class name, where they arrive wrapped (Py4JJavaError, SparkException)
_DELTA_JAVA = re.compile(r"\b(?:io\.delta\.exceptions|org\.apache\.spark\.sql\.delta)\.("
                         + "|".join(DELTA_CONFLICTS) + r")\b")
_REDIS_ADDRESS = re.compile(r"connecting to (\S+?:\d+)")


def _resolve(name: str) -> type | None:
    module, _, attr = name.partition(":")
    loaded = sys.modules.get(module)
    found = getattr(loaded, attr, None) if loaded is not None else None
    return found if isinstance(found, type) else None


def family_of(exc: BaseException) -> Family:
    """The family of ``exc``: the first family naming the most specific class of its MRO; else a
    Delta conflict named in its text; else UNEXPECTED."""
    resolved = [(fam, {t for t in map(_resolve, fam.types) if t is not None}) for fam in FAMILIES]
    for cls in type(exc).__mro__:
        for fam, types in resolved:
            if cls in types:
                return fam
    if _DELTA_JAVA.search(_text(exc)):
        return next(f for f in FAMILIES if f.code == 6)
    return UNEXPECTED


def explain(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that escaped a command."""
    fam = family_of(exc)
    text = _text(exc)
    where = _REDIS_ADDRESS.search(text)
    msg = fam.hint.format(msg=first_line(exc), type=type(exc).__name__, where=f" at {where[1]}" if where else "")
    return fam.code, " ".join(msg.split())  # one line, whatever the exception's text held


def first_line(exc: BaseException) -> str:
    """The gist of an exception's text in one line: its first line (no JVM stack); for an error
    re-raised from a Python worker, the worker's exception line; for Py4J, the Java exception."""
    text = _text(exc).split("JVM stacktrace:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        # PythonException: "An exception was thrown from the Python worker ..." then the worker's
        # traceback, whose last line is the worker's own exception
        return lines[-1]
    if lines[0].startswith("An error occurred while calling") and len(lines) > 1:  # Py4JJavaError
        return lines[1].lstrip(": ")
    return lines[0]


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ (or a JVM that is gone) must not hide the real error
        return ""
