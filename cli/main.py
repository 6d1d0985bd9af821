"""The ``ugsep`` command: one entry point; each command group lives in its own module.

    cli/model_commands.py    train, eval, quantize, score-local      (PyTorch only)
    cli/job_commands.py      generate, user-stage, score-stage, run, baseline-score, show, demo, backfill
    cli/feature_commands.py  features apply, materialize, serve-score
    cli/data_commands.py     import, evaluate-day
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (spark-submit .../cli/main.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import data_commands, feature_commands, job_commands, model_commands  # noqa: E402

GROUPS = (model_commands, job_commands, feature_commands, data_commands)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ugsep",
        description="Batch scoring for UG-Sep ranking models: train, encode users once, score groups.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyError as e:  # str() of a KeyError is only the key
        print(f"ugsep {args.command}: error: missing key {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"ugsep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
