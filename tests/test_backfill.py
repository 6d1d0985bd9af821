"""Backfill driver (unit, with fake days) and the real `ugsep backfill` + cron script on 3 days."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs.backfill import backfill, day_is_done, day_range

ROOT = Path(__file__).resolve().parents[1]


def test_day_range_and_its_errors():
    assert day_range("2026-02-27", "2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    with pytest.raises(ValueError, match="before"):
        day_range("2026-03-02", "2026-03-01")
    with pytest.raises(ValueError, match="--start '2026-3-1' is not a date of the form YYYY-MM-DD"):
        day_range("2026-3-1", "2026-03-02")
    with pytest.raises(ValueError, match="--end '2026-13-01' is not a date"):
        day_range("2026-03-01", "2026-13-01")


def test_backfill_runs_in_order_and_stops_after_a_failure():
    ran = []

    def run(ds):
        ran.append(ds)
        if ds == "d2":
            raise RuntimeError("boom")
        return {}

    report = backfill(["d1", "d2", "d3", "d4"], run)
    assert ran == ["d1", "d2"] and report.done == ["d1"]
    assert report.failed == {"d2": "RuntimeError: boom"} and report.not_run == ["d3", "d4"] and not report.ok


def test_backfill_skips_done_days_and_runs_in_parallel():
    active, peak, lock = [0], [0], threading.Lock()

    def run(ds):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return {}

    report = backfill([f"d{i}" for i in range(6)], run, is_done=lambda ds: ds == "d0", parallel=3)
    assert report.skipped == ["d0"] and report.done == [f"d{i}" for i in range(1, 6)] and report.ok
    assert peak[0] == 3


def test_backfill_starts_a_day_as_soon_as_one_ends():
    """With two at a time, a long day must not hold back the short ones queued behind it: the
    long day ends only once the last short day has started (lockstep waiting would start that
    one only after the long day, and the long day would give up waiting)."""
    last_started = threading.Event()
    waited = {}

    def run(ds):
        if ds == "long":
            waited[ds] = last_started.wait(timeout=30)
        elif ds == "s3":
            last_started.set()
        return {}

    report = backfill(["long", "s1", "s2", "s3"], run, parallel=2)
    assert report.ok and sorted(report.done) == ["long", "s1", "s2", "s3"]
    assert waited == {"long": True}


def test_backfill_refuses_a_parallel_below_one():
    with pytest.raises(ValueError, match="--parallel must be at least 1, got 0"):
        backfill(["d1"], lambda ds: {}, parallel=0)


def test_a_day_is_done_only_while_its_summary_describes_the_scores(tmp_path):
    from jobs.config import JobConfig
    from jobs.summary import JobSummary

    cfg = JobConfig(warehouse=str(tmp_path))
    assert not day_is_done(cfg, "2026-09-01", "m1", lambda d: 5)  # no summary
    JobSummary("run", "2026-09-01", model_version="m1", rows_in=3, rows_out=2, rows_quarantined=1,
               commits={"scores": 5}).emit(cfg.summary_path("run", "2026-09-01"))
    assert day_is_done(cfg, "2026-09-01", "m1", lambda d: 5)
    assert not day_is_done(cfg, "2026-09-01", "m1", lambda d: 6)  # the day's scores were written since
    assert not day_is_done(cfg, "2026-09-01", "m2", lambda d: 5)  # another model
    JobSummary("run", "2026-09-02", model_version="m1", empty_day=True).emit(cfg.summary_path("run", "2026-09-02"))
    assert day_is_done(cfg, "2026-09-02", "m1", lambda d: None)


def test_the_progress_line_never_says_nan(capsys):
    backfill(["2026-09-01", "2026-09-02"], lambda ds: (_ for _ in ()).throw(ValueError("boom")))
    err = capsys.readouterr().err
    assert "nan" not in err.lower() and "ETA unknown" in err


def _ugsep(*args, env=None, check=True):
    p = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                       timeout=900, cwd=ROOT, env=env)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


@pytest.mark.spark
def test_backfill_and_cron_for_real(spark, tmp_path, model_dir):
    from pyspark.sql import functions as F

    from jobs.config import JobConfig
    from jobs.contracts import SCORES
    from jobs.generate import generate_tables

    days = ["2026-09-01", "2026-09-02", "2026-09-03"]
    wh = tmp_path / "warehouse"
    cfg = JobConfig(warehouse=str(wh), model=model_dir)
    sizes = {ds: generate_tables(spark, cfg, ds, 12, mean_cands=4)["candidates"] for ds in days}
    base = f'warehouse = "{wh}"\nmodel = "{model_dir}"\nusers_per_batch = 16\npartitions = 1\n'
    spark_conf = '[spark]\n"spark.master" = "local[2]"\n"spark.sql.shuffle.partitions" = "1"\n'
    conf = tmp_path / "job.toml"

    conf.write_text(base + spark_conf)
    logs = tmp_path / "spark-logs"
    first = _ugsep("backfill", "--start", days[0], "--end", days[2], "--config", str(conf), check=False,
                   env={**os.environ, "UGSEP_TEST_FAULTS": f"fail-day={days[1]}", "UGSEP_LOG_DIR": str(logs)})
    assert first.returncode == 1
    # quiet by default: Spark's own output went to the log file the command names, not the terminal
    (log,) = logs.glob("ugsep-backfill_*.log")
    assert f"its log: {log}" in first.stderr and ":: resolving dependencies" in log.read_text()
    assert ":: resolving dependencies" not in first.stderr + first.stdout
    assert "1 done" in first.stdout and days[1] in first.stdout and "injected failure" in first.stderr
    assert f"not run ['{days[2]}']" in first.stdout

    second = _ugsep("backfill", "--start", days[0], "--end", days[2], "--config", str(conf), "--skip-done",
                    "--verbose")
    assert ":: resolving dependencies" in second.stderr + second.stdout  # --verbose shows it
    assert "2 done, 1 skipped" in second.stdout

    def counts():
        scores = spark.read.format("delta").load(cfg.table_path(SCORES))
        return {r["ds"]: (r["n"], r["pairs"]) for r in scores.groupBy("ds").agg(
            F.count("*").alias("n"), F.countDistinct("user_id", "item_id").alias("pairs")).collect()}

    assert counts() == {ds: (n, n) for ds, n in sizes.items()}  # every day complete, no duplicates

    # a day is done while its summary describes the scores table: a failed rerun leaves both as they
    # were; a later commit to the day's scores (a rerun that wrote and died before its summary) does not
    import shutil

    from delta.tables import DeltaTable

    from jobs.delta_io import last_commit_of_day
    from jobs.run_day import run_day

    def done(ds):
        return day_is_done(cfg, ds, version, lambda d: last_commit_of_day(spark, cfg.table_path(SCORES), d))

    summary_path = cfg.summary_path("run", days[0])
    version = json.loads(summary_path.read_text())["model_version"]
    assert done(days[0])
    before = summary_path.read_bytes()
    broken = tmp_path / "broken-model"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(Exception, match="model.safetensors"):
        run_day(spark, dataclasses.replace(cfg, model=str(broken)), days[0])
    assert summary_path.read_bytes() == before and done(days[0])  # the summary was not deleted first
    DeltaTable.forPath(spark, cfg.table_path(SCORES)).delete(F.col("ds") == days[0])
    assert not done(days[0]) and done(days[2])

    # cron: the same day again through the script (replaces, no duplicates), bad dates, the lock
    env = {**os.environ, "UGSEP_HOME": str(ROOT), "UGSEP_CONFIG": str(conf), "UGSEP_LOG_DIR": str(tmp_path / "logs"),
           "UGSEP_BIN": str(Path(sys.executable).parent / "ugsep")}
    script = str(ROOT / "pipelines/cron/ugsep-daily.sh")
    run = subprocess.run([script, days[0]], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "succeeded" in run.stdout and list((tmp_path / "logs").glob(f"ugsep-run_{days[0]}_*.log"))
    # the DAG's pipeline: the day's user_state went to the online store between the stages
    online = json.loads(cfg.summary_path("materialize", days[0]).read_text())
    assert online["user_state_rows"] == json.loads(cfg.summary_path("user-stage", days[0]).read_text())["rows_out"]
    assert counts() == {ds: (n, n) for ds, n in sizes.items()}
    bad = subprocess.run([script, "2026-13-45"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a date" in bad.stderr
    with open(tmp_path / "logs" / f".ugsep-run_{days[2]}.lock", "w") as held:
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)
        locked = subprocess.run([script, days[2]], capture_output=True, text=True, env=env)
    assert locked.returncode == 75 and "already in progress" in locked.stderr
