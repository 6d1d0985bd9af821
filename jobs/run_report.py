"""The run report: a Markdown page next to a job's summary JSON, with a score histogram PNG for scoring jobs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QUANTILE_NAMES = ("min", "p50", "p90", "p99", "max")
PNG_SIZE = (800, 400)  # pixels (width, height)


def report_paths(json_path: Path) -> tuple[Path, Path]:
    """The report's Markdown and PNG paths for a summary JSON at ``json_path``."""
    return json_path.with_suffix(".md"), json_path.with_name(f"{json_path.stem}_scores.png")


def _int(n: int) -> str:
    return f"{n:,}"


def _counts_table(title: str, key: str, counts: dict[str, int]) -> list[str]:
    rows = [f"| {k} | {_int(v)} |" for k, v in sorted(counts.items())] or ["| (none) | 0 |"]
    return [f"## {title}", "", f"| {key} | rows |", "|---|---:|", *rows, ""]


def report_markdown(summary: dict, png_name: str | None = None) -> str:
    """The report of one job run as Markdown, from its summary dict (``JobSummary.to_dict`` plus, for
    scoring jobs, ``score_histogram`` and ``score_quantiles``); ``png_name`` links the histogram image."""
    unit, total = summary["unit"], summary["total_seconds"]
    lines = [
        f"# {summary['job']} ds={summary['ds']}", "",
        "| | |", "|---|---:|",
        f"| model_version | `{summary['model_version']}` |",
        f"| rows in ({unit}) | {_int(summary['rows_in'])} |",
        f"| rows out | {_int(summary['rows_out'])} |",
        f"| rows quarantined | {_int(summary['rows_quarantined'])} |",
        f"| users | {_int(summary['users'])} |",
        f"| users computed on the fly | {_int(summary['users_computed_on_the_fly'])} |",
        f"| total seconds | {total:.2f} |",
        f"| throughput ({unit}/s) | {summary[f'{unit}_per_s']:,.1f} |",
        "",
        "## Timings", "", "| stage | seconds | share |", "|---|---:|---:|",
        *[f"| {step} | {s:.2f} | {s / total:.0%} |" if total else f"| {step} | {s:.2f} | |"
          for step, s in summary["seconds"].items()],
        "",
        *_counts_table("Quarantined rows by reason", "reason", summary["quarantine_reasons"]),
        *_counts_table("Unknown categorical ids (valid rows)", "field", summary["unknown_categorical"]),
    ]
    quantiles, hist = summary.get("score_quantiles"), summary.get("score_histogram")
    if quantiles is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
        lines += ["## Scores", "", "| " + " | ".join(QUANTILE_NAMES) + " |", "|" + "---:|" * len(QUANTILE_NAMES),
                  "| " + " | ".join(fmt(quantiles[q]) for q in QUANTILE_NAMES) + " |", ""]
    if hist is not None and hist["out_of_range"]:
        lines += [f"**{_int(hist['out_of_range'])} scores are outside [0, 1] or NaN** (not in the histogram).", ""]
    if png_name:
        lines += [f"![score histogram]({png_name})", ""]
    return "\n".join(lines)


def draw_histogram(histogram: dict, path: Path, title: str) -> None:
    """Draw ``histogram`` ({"edges": [...], "counts": [...]}) as a PNG of ``PNG_SIZE`` pixels."""
    # the object API with the Agg canvas: no display, and no pyplot state shared by days scored in threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges, counts = histogram["edges"], histogram["counts"]
    dpi = 100
    fig = Figure(figsize=(PNG_SIZE[0] / dpi, PNG_SIZE[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # fixed margins: the constrained layout engine is slow
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", edgecolor="white")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("score")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    fig.savefig(path, dpi=dpi, format="png")


def write_report(summary: dict, json_path: Path, drawn_png: Path | None = None) -> Path:
    """Write the Markdown report (and the histogram PNG if ``summary`` has one) next to ``json_path``,
    each file replaced whole (written under a temporary name, then renamed).
    ``drawn_png``: the same histogram already drawn for another job of the run (copied, not drawn again)."""
    md_path, png_path = report_paths(json_path)
    png_name = None
    if summary.get("score_histogram") is not None:
        with replacing(png_path) as tmp:
            if drawn_png is not None:
                shutil.copyfile(drawn_png, tmp)
            else:
                n = sum(summary["score_histogram"]["counts"])
                draw_histogram(summary["score_histogram"], tmp, f"ds={summary['ds']}: {n:,} scores")
        png_name = png_path.name
    with replacing(md_path) as tmp:
        tmp.write_text(report_markdown(summary, png_name))
    return md_path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block succeeds, so
    a reader (or a crash) never sees half a file, and a failure leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
