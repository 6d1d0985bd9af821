"""The ``ugsep`` command: one entry point; each command group lives in its own module.

    cli/model_commands.py    train, eval, quantize, score-local      (PyTorch only)
    cli/job_commands.py      generate, user-stage, score-stage, run, baseline-score, show, demo, backfill
    cli/feature_commands.py  features apply, materialize, serve-score, serve
    cli/data_commands.py     import, evaluate-day
    cli/cluster_commands.py  cluster start|stop|status               (a Spark standalone cluster here)
    cli/errors.py            the error boundary: a failure is one line and its family's exit code
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (spark-submit .../cli/main.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import cluster_commands, data_commands, feature_commands, job_commands, model_commands  # noqa: E402

GROUPS = (model_commands, job_commands, feature_commands, data_commands, cluster_commands)


DEBUG_HELP = "on an error, show the traceback instead of one line"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ugsep",
        description="Batch scoring for UG-Sep ranking models: train, encode users once, score groups.",
        epilog="Errors are one line on stderr, `ugsep COMMAND: error: ...`, with an exit code per kind of "
               "failure: 1 unexpected, 2 bad input, 3 checkpoint, 4 tables, 5 data not ready, "
               "6 concurrent write, 7 feature store (see cli/errors.py).",
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    for command in sub.choices.values():  # also after the command; SUPPRESS keeps a --debug given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. A failure is one line on stderr and its family's exit code (cli/errors.py);
    with --debug it is raised, traceback and all."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if args.debug:
            raise
        from cli.errors import explain

        code, message = explain(e)
        print(f"ugsep {args.command}: error: {message}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
