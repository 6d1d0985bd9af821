"""The run report: Markdown and histogram PNG next to a job's summary JSON."""

import json

import matplotlib.image
import numpy as np
import pytest

from jobs.run_report import PNG_SIZE, draw_histogram, report_markdown, report_paths
from jobs.summary import JobSummary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def a_summary(job: str = "score-stage", unit: str = "candidates") -> JobSummary:
    return JobSummary(
        job, "2026-11-01", unit=unit, model_version="ugsep-0123abcd", rows_in=123456, rows_out=120000,
        rows_quarantined=3456, users=789, quarantine_reasons={"missing_item_features": 3000, "bad_recency": 456},
        unknown_categorical={"category": 17, "segment": 0}, users_computed_on_the_fly=5,
        seconds={"read+validate": 2.5, "quarantine": 1.25, "score+write": 10.25},
    )


def a_distribution(rng: np.random.Generator, n: int = 5000) -> dict:
    """What jobs.report.observe_score_distribution gives, computed here with numpy."""
    scores = rng.beta(2, 5, n)
    counts, edges = np.histogram(scores, bins=20, range=(0, 1))
    qs = np.quantile(scores, [0, 0.5, 0.9, 0.99, 1])
    return {"score_histogram": {"edges": edges.tolist(), "counts": counts.tolist(), "out_of_range": 0},
            "score_quantiles": dict(zip(("min", "p50", "p90", "p99", "max"), qs.tolist(), strict=True))}


def table_row(md: str, label: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``label``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no table row {label!r} in:\n{md}")


def test_markdown_has_the_summary_numbers(rng):
    d = {**a_summary().to_dict(), **a_distribution(rng)}
    md = report_markdown(d, "score-stage_2026-11-01_scores.png")
    assert md.startswith("# score-stage ds=2026-11-01")
    assert table_row(md, "model_version") == ["`ugsep-0123abcd`"]
    assert table_row(md, "rows in (candidates)") == ["123,456"]
    assert table_row(md, "rows out") == ["120,000"]
    assert table_row(md, "rows quarantined") == ["3,456"]
    assert table_row(md, "users") == ["789"]
    assert table_row(md, "users computed on the fly") == ["5"]
    assert float(table_row(md, "total seconds")[0]) == pytest.approx(d["total_seconds"], abs=0.005)
    assert float(table_row(md, "throughput (candidates/s)")[0].replace(",", "")) == pytest.approx(
        d["candidates_per_s"], abs=0.05)
    for step, s in d["seconds"].items():
        secs, share = table_row(md, step)
        assert float(secs) == pytest.approx(s, abs=0.005)
        assert float(share.rstrip("%")) == pytest.approx(100 * s / d["total_seconds"], abs=0.5)
    for reason, n in d["quarantine_reasons"].items():
        assert table_row(md, reason) == [f"{n:,}"]
    for name, n in d["unknown_categorical"].items():
        assert table_row(md, name) == [f"{n:,}"]
    q = d["score_quantiles"]
    header = next(i for i, line in enumerate(md.splitlines()) if line.replace(" ", "") == "|min|p50|p90|p99|max|")
    values = [float(c) for c in md.splitlines()[header + 2].strip("|").split("|")]
    assert values == pytest.approx([q[k] for k in ("min", "p50", "p90", "p99", "max")], abs=5e-5)
    assert "](score-stage_2026-11-01_scores.png)" in md
    assert "outside [0, 1]" not in md


def test_markdown_of_a_job_without_scores_has_no_score_section():
    d = a_summary("user-stage", unit="users").to_dict()
    d["quarantine_reasons"] = {}
    md = report_markdown(d)
    assert table_row(md, "rows in (users)") == ["123,456"]
    assert table_row(md, "(none)") == ["0"]  # no quarantine reasons: said, not left blank
    assert "## Scores" not in md and "![" not in md


def test_markdown_flags_scores_outside_the_histogram_and_an_empty_day(rng):
    dist = a_distribution(rng)
    dist["score_histogram"]["out_of_range"] = 7
    dist["score_quantiles"] = dict.fromkeys(dist["score_quantiles"])  # an empty day has no quantiles
    md = report_markdown({**a_summary().to_dict(), **dist})
    assert "**7 scores are outside [0, 1] or NaN**" in md
    assert "| n/a | n/a | n/a | n/a | n/a |" in md


def test_histogram_png_is_a_real_png_of_the_stated_size(tmp_path, rng):
    path = tmp_path / "h.png"
    draw_histogram(a_distribution(rng)["score_histogram"], path, "a title")
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (width, height) == PNG_SIZE


def test_emit_writes_json_report_and_png_side_by_side(tmp_path, rng, capsys):
    dist = a_distribution(rng)
    json_path = tmp_path / "_summaries" / "score-stage_2026-11-01.json"
    a_summary().emit(json_path, dist)
    md_path, png_path = report_paths(json_path)
    assert (md_path.name, png_path.name) == ("score-stage_2026-11-01.md", "score-stage_2026-11-01_scores.png")
    saved = json.loads(json_path.read_text())
    assert saved["score_histogram"] == dist["score_histogram"] and saved["score_quantiles"] == dist["score_quantiles"]
    assert saved["rows_in"] == 123456
    link = md_path.read_text().split("![score histogram](")[1].split(")")[0]
    assert (md_path.parent / link).resolve() == png_path.resolve()  # relative link resolves to the PNG
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    assert f"report={md_path}" in capsys.readouterr().out


def test_emit_reuses_a_png_drawn_for_the_same_histogram(tmp_path, rng):
    """`ugsep run` reports the score stage's histogram again: its PNG is copied, not drawn again."""
    dist = a_distribution(rng)
    drawn = tmp_path / "drawn_before.png"
    # a title no report would draw: a fresh draw of the same histogram would not match these bytes
    draw_histogram(dist["score_histogram"], drawn, "drawn before, elsewhere")
    run_json = tmp_path / "run_2026-11-01.json"
    a_summary("run").emit(run_json, dist, drawn_png=drawn)
    md_path, png_path = report_paths(run_json)
    assert png_path.read_bytes() == drawn.read_bytes()
    assert f"]({png_path.name})" in md_path.read_text()


def test_emit_without_scores_writes_no_png(tmp_path):
    json_path = tmp_path / "user-stage_2026-11-01.json"
    a_summary("user-stage", unit="users").emit(json_path)
    md_path, png_path = report_paths(json_path)
    assert md_path.exists() and not png_path.exists()
    assert "score_histogram" not in json.loads(json_path.read_text())


def observed_while_written(df) -> dict:
    """The distribution as the jobs get it: observed while the rows are written (here to Spark's noop sink)."""
    from jobs.report import observe_score_distribution

    observed, distribution = observe_score_distribution(df)
    observed.write.format("noop").mode("overwrite").save()
    return distribution()


@pytest.mark.spark
def test_score_distribution_matches_numpy(spark, rng):
    good = np.concatenate([rng.random(2000, dtype=np.float32), np.float32([0.0, 0.5, 1.0])])
    bad = [1.5, -0.25, float("nan"), None]
    df = spark.createDataFrame([(float(s),) for s in good] + [(s,) for s in bad], "score float")
    dist = observed_while_written(df)
    hist, q = dist["score_histogram"], dist["score_quantiles"]
    expected, edges = np.histogram(good, bins=20, range=(0, 1))
    assert hist["counts"] == expected.tolist()
    assert hist["edges"] == pytest.approx(edges.tolist())
    assert sum(hist["counts"]) + hist["out_of_range"] == df.count()
    assert hist["out_of_range"] == len(bad)
    assert q["min"] == pytest.approx(-0.25)
    assert np.isnan(q["max"])  # Spark orders NaN above every number: the report shows it
    in_range = observed_while_written(spark.createDataFrame([(float(s),) for s in good], "score float"))
    assert in_range["score_quantiles"]["max"] == pytest.approx(1.0)
    for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert in_range["score_quantiles"][name] == pytest.approx(np.quantile(good, p), abs=2e-3)
    empty = observed_while_written(df.limit(0))  # every candidate of the day quarantined
    assert sum(empty["score_histogram"]["counts"]) == empty["score_histogram"]["out_of_range"] == 0
    assert set(empty["score_quantiles"].values()) == {None}


def test_a_long_step_prints_progress_while_it_runs(capsys):
    """The heartbeat of JobSummary.timed (the Spark stage progress it prints is faked here)."""
    import time

    said = iter(["1/8 tasks of 1 active stage(s) done", None, "7/8 tasks of 1 active stage(s) done"])
    s = JobSummary("user-stage", "2026-11-01", progress=lambda: next(said, None), progress_every=0.05)
    with s.timed("encode+write"):
        time.sleep(0.2)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[user-stage 2026-11-01] encode+write ..." and err[-1].endswith("done in 0.2s")
    beats = err[1:-1]
    assert len(beats) >= 3 and all(b.startswith("[user-stage 2026-11-01] encode+write: 0s") for b in beats)
    assert beats[0].endswith(", 1/8 tasks of 1 active stage(s) done") and beats[1].endswith(": 0s")
    assert 0.2 <= s.seconds["encode+write"] < 1 and "progress" not in s.to_dict()


@pytest.mark.spark
def test_stage_progress_reads_the_running_stage(spark):
    import threading
    import time

    from jobs.spark_progress import stage_progress

    describe = stage_progress(spark)
    assert describe() is None  # nothing running
    job = threading.Thread(target=lambda: spark.sparkContext.parallelize(range(4), 4).foreach(
        lambda _: time.sleep(1.5)))
    job.start()
    seen = []
    while job.is_alive():
        seen.append(describe())
        time.sleep(0.1)
    assert any(s is not None and s.endswith("/4 tasks of 1 active stage(s) done") for s in seen), seen
