"""The pipeline on a real Spark standalone cluster: a master and two workers on this machine,
each its own JVM (``jobs.cluster``), every job a real ``spark-submit`` of the ugsep CLI.

Scores equal local mode's; an executor JVM killed in the middle of the score stage, or while a
task's files are written and not yet committed, costs a retried task and nothing else; the
model stages get a GPU from Spark's scheduler (fake addresses from a discovery script) and,
without CUDA, run on the CPU saying so. `pytest -m cluster` runs these alone.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import local_redis
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from feature_store.store import feature_store
from jobs.baseline import BASELINE_TABLE
from jobs.cluster import executor_of, launcher_env, start_cluster, stop_cluster
from jobs.config import JobConfig, load_config
from jobs.contracts import SCORES, USER_STATE
from jobs.generate import generate_tables
from jobs.run_day import run_day

pytestmark = [pytest.mark.spark, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[1]
DS = "2026-09-01"
INPUTS = ("candidates", "user_features", "item_features")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g", gpus=1)
    yield c
    stop_cluster(c.root)


@pytest.fixture(scope="module")
def day(spark, tmp_path_factory, model_dir):
    """One generated day's input tables, and its scores from local mode (the reference)."""
    root = tmp_path_factory.mktemp("cluster-day")
    inputs = JobConfig(warehouse=str(root / "inputs"), model=model_dir)
    generate_tables(spark, inputs, DS, 60, mean_cands=12)
    local = load_config(str(job_toml(root, "local", inputs)))
    run_day(spark, local, DS)
    return root, inputs, scores_of(spark, local)


def job_toml(root: Path, name: str, inputs: JobConfig, task_gpus: float = 0) -> Path:
    """A job config of its own warehouse, reading the shared input tables."""
    conf = root / f"{name}.toml"
    tables = "".join(f'[tables.{t}]\npath = "{inputs.table_path(t)}"\n' for t in INPUTS)
    conf.write_text(f'warehouse = "{root / name}"\nmodel = "{inputs.model}"\nusers_per_batch = 8\npartitions = 2\n'
                    f"task_gpus = {task_gpus}\n{tables}")
    return conf


def submit(cluster, conf: Path, *args: str, faults: str = "", wait: bool = True):
    """`spark-submit --master spark://... cli/main.py <args> --config <conf>`, as the DAG runs it."""
    cmd = [*cluster.submit_command(), str(ROOT / "cli" / "main.py"), *args, "--config", str(conf)]
    env = {**launcher_env(), "UGSEP_LOG_DIR": str(conf.parent / "logs"), "PYTHONUNBUFFERED": "1"}
    if faults:
        env["UGSEP_TEST_FAULTS"] = faults
    p = subprocess.Popen(cmd, cwd=conf.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-4000:]
    return out


def scores_of(spark, cfg) -> pd.DataFrame:
    df = spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == DS)
    return df.select("user_id", "item_id", "score", "rank").toPandas().sort_values(["user_id", "item_id"],
                                                                                   ignore_index=True)


def same_scores(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want) and not got.duplicated(["user_id", "item_id"]).any()
    assert (got[["user_id", "item_id", "rank"]].values == want[["user_id", "item_id", "rank"]].values).all()
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-6)


def app_id(out: str) -> str:
    return re.search(r"with app ID (app-\S+)", out).group(1)


def summary_line(out: str, job: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith(f"{job} ds={DS} "))


@pytest.fixture(scope="module")
def redis_or_none():
    """A redis-server of this module's own, or None where none is installed (then the stages
    test runs without materializing, rather than not at all)."""
    proc, address = local_redis.start_redis_server()
    yield address
    if proc is not None:
        proc.terminate()
        proc.wait(10)


def test_stages_on_the_cluster_score_as_local_mode_with_gpus_assigned(spark, cluster, day, redis_or_none):
    """user-stage (materializing into Redis), score-stage and baseline-score submitted to the
    cluster, the model stages asking Spark for a GPU each: the scores equal local mode's, Feast
    reads back the state the executors wrote, and each executor's log says which GPU address
    its tasks were given and that they ran on the CPU (no CUDA here)."""
    root, inputs, local = day
    conf = job_toml(root, "stages", inputs, task_gpus=1)
    redis_server = redis_or_none
    user = submit(cluster, conf, "user-stage", "--ds", DS, *(["--materialize", "--redis", redis_server]
                                                              if redis_server else []))
    assert redis_server is None or "written from the executors" in user
    score = submit(cluster, conf, "score-stage", "--ds", DS)
    cfg = load_config(str(conf))
    same_scores(scores_of(spark, cfg), local)
    if redis_server:
        state = (spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS)
                 .select("user_id", "state").toPandas())
        online = feature_store(cfg.warehouse, redis_server).get_online_features(
            features=["user_state:state"], entity_rows=[{"user_id": int(u)} for u in state["user_id"]]).to_dict()
        for got, want in zip(online["state"], state["state"], strict=True):
            np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    for out in (user, score):
        logs = list((cluster.work_dir() / app_id(out)).glob("*/stderr"))
        said = {m for log in logs for m in re.findall(r"Spark assigned GPU address (\d+) to this task, but CUDA "
                                                      r"is not available here; running on the CPU", log.read_text())}
        assert said and said <= {"0", "1"}, (app_id(out), said)
    baseline = submit(cluster, conf, "baseline-score", "--ds", DS)
    assert "baseline-score ds=" in baseline
    full = spark.read.format("delta").load(cfg.table_path(BASELINE_TABLE)).where(F.col("ds") == DS)
    full = full.select("user_id", "item_id", "score", "rank").toPandas().sort_values(["user_id", "item_id"],
                                                                                   ignore_index=True)
    same_scores(full, local)


PROBE = """
import json, os
import pyarrow as pa
from pyspark import TaskContext
from jobs.config import JobConfig
from jobs.model_stage import map_in_arrow_with_model
from jobs.spark_session import build_spark

def record(tag):
    def worker(batches, ckpt="", device="", marker=""):
        gpu = TaskContext.get().resources().get("gpu")
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"seen": json.dumps([tag, gpu.addresses if gpu else [], device])}])
    return worker

spark = build_spark("gpu-probe")
df = spark.range(40).repartition(4)
cfg = JobConfig(task_gpus=1)
model = map_in_arrow_with_model(df, record("model"), pa.schema([("seen", pa.string())]), cfg, "unused")
plain = df.mapInArrow(lambda b: record("plain")(b), "seen string")
print("PROBE " + json.dumps([json.loads(r.seen) for r in model.collect() + plain.collect()]))
"""


def test_only_the_model_stages_get_a_gpu_from_inside_their_tasks(cluster, tmp_path):
    """From inside the tasks: a model stage's tasks hold a GPU address and pick the CPU for want
    of CUDA; a plain stage of the same application holds none."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = subprocess.run([*cluster.submit_command(), str(probe)], cwd=tmp_path,
                         env={**launcher_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    seen = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("PROBE "))[6:])
    model = [s for s in seen if s[0] == "model"]
    plain = [s for s in seen if s[0] == "plain"]
    assert len(model) == len(plain) == 4
    assert all(len(gpus) == 1 and gpus[0] in ("0", "1") and device == "cpu" for _, gpus, device in model), model
    assert all(gpus == [] for _, gpus, _ in plain), plain


def kill_the_held_executor(p: subprocess.Popen, marker: Path, timeout: float = 300) -> int:
    """Wait for the held score worker's pid at ``marker``; SIGKILL the executor JVM it runs in."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert p.poll() is None and time.monotonic() < deadline, "no score worker was held"
        time.sleep(0.2)
    executor = executor_of(int(marker.read_text()))
    assert executor is not None
    os.kill(executor, signal.SIGKILL)
    return executor


def test_an_executor_killed_mid_score_stage_costs_a_retry_and_nothing_else(spark, cluster, day):
    root, inputs, local = day
    conf, marker = job_toml(root, "killed", inputs), root / "held-mid-score"
    p = submit(cluster, conf, "run", "--ds", DS, faults=f"score-hold-once={marker}", wait=False)
    kill_the_held_executor(p, marker)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-4000:]
    cfg = load_config(str(conf))
    same_scores(scores_of(spark, cfg), local)  # complete: nothing missing, nothing twice
    summary = json.loads(cfg.summary_path("run", DS).read_text())
    assert summary["tasks_retried"] >= 1 and len(summary["executors_lost"]) == 1, summary
    assert "tasks_retried=" in summary_line(out, "run")


def test_an_executor_killed_while_its_files_are_uncommitted_leaves_the_day_whole(spark, cluster, day):
    """Killed after a score task's last rows went to its files, before the task committed them:
    the day is either written whole or untouched, never partly; a rerun completes it."""
    root, inputs, local = day
    conf, marker = job_toml(root, "uncommitted", inputs), root / "held-at-end"
    p = submit(cluster, conf, "run", "--ds", DS, faults=f"score-hold-at-end-once={marker}", wait=False)
    kill_the_held_executor(p, marker)
    out, _ = p.communicate(timeout=600)
    cfg = load_config(str(conf))
    scores = len(scores_of(spark, cfg))
    assert scores in (0, len(local)), (scores, p.returncode, out[-3000:])
    if scores:
        same_scores(scores_of(spark, cfg), local)
    run_day(spark, cfg, DS)  # the rerun (here in local mode, on the same tables)
    same_scores(scores_of(spark, cfg), local)
    print(f"cluster: killed before the task commit: exit {p.returncode}, {scores} of {len(local)} rows; "
          f"{summary_line(out, 'run') if p.returncode == 0 else 'failed'}")


def test_the_cluster_command_starts_reports_and_stops_a_cluster(tmp_path):
    def ugsep(*args):
        return subprocess.run([sys.executable, "-m", "cli.main", "cluster", *args, "--root", str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=180)

    up = ugsep("start", "--workers", "1")
    assert up.returncode == 0 and "spark-submit --master spark://127.0.0.1:" in up.stdout, up.stderr
    again = ugsep("start")
    assert again.returncode == 2 and again.stderr.startswith("ugsep cluster: error: a cluster is already running")
    status = json.loads(ugsep("status").stdout)
    assert status["alive_workers"] == 1 and status["master"] in up.stdout
    assert ugsep("stop").stdout.strip() == "cluster stopped"
    assert ugsep("status").returncode == 5
