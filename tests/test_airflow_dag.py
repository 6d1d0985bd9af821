"""The Airflow DAG, checked with real Airflow from its own venv (.venv-airflow, built by `make airflow`).

The DAG file is loaded by Airflow's DagBag; the spark-submit command lines come from the Spark
provider's own hook; the user stage of a tiny day runs for real through `airflow tasks test`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".venv-airflow" / "bin"
DAGS = ROOT / "pipelines" / "airflow"
DS = "2026-10-05"

pytestmark = pytest.mark.skipif(not (AIRFLOW_BIN / "airflow").exists(),
                                reason="no .venv-airflow: run `make airflow` (`make test` does)")


def airflow_env(tmp_path: Path, settings: dict) -> dict:
    """Environment of a throwaway Airflow: its home, our DAG folder, a local Spark connection, the Variable."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "AIRFLOW_VAR_UGSEP": json.dumps(settings),
        # the provider runs `spark-submit` from PATH: the one pip installed next to our Python
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


def probe(tmp_path: Path, settings: dict) -> dict:
    p = subprocess.run([str(AIRFLOW_BIN / "python"), str(ROOT / "tests/airflow/probe_dag.py"), str(DAGS), DS],
                       capture_output=True, text=True, env=airflow_env(tmp_path, settings), timeout=300)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE ")]
    assert p.returncode == 0 and lines, p.stdout + p.stderr
    return json.loads(lines[-1][len("PROBE "):])


def test_dag_loads_with_the_expected_graph_and_spark_submit_commands(tmp_path):
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    delta_jars = configure_spark_with_delta_pip(SparkSession.builder)._options["spark.jars.packages"]
    gpu = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.25"}
    settings = {"config": "/etc/ugsep/job.toml", "python": "/opt/ugsep/bin/python", "gpu_conf": gpu,
                "spark_conf": {"spark.sql.shuffle.partitions": "64"}, "max_active_runs": 2}
    out = probe(tmp_path, settings)

    assert out["import_errors"] == {} and out["dags"] == ["ugsep_daily", "ugsep_maintain"]
    assert out["catchup"] is True and out["max_active_runs"] == 2
    # each run scores the day its data interval covers, after that day is over
    assert out["timetable"] == "CronDataIntervalTimetable"
    assert out["first_runs"][:2] == [
        {"ds": "2026-11-01", "start": "2026-11-01T06:00:00+00:00", "end": "2026-11-02T06:00:00+00:00",
         "fires": "2026-11-02T06:00:00+00:00"},
        {"ds": "2026-11-02", "start": "2026-11-02T06:00:00+00:00", "end": "2026-11-03T06:00:00+00:00",
         "fires": "2026-11-03T06:00:00+00:00"}]
    tasks = out["tasks"]
    assert {t: v["upstream"] for t, v in tasks.items()} == {
        "user_stage": [], "materialize": ["user_stage"], "score_stage": ["materialize"]}
    for task, command in (("user_stage", "user-stage"), ("materialize", "materialize"),
                          ("score_stage", "score-stage")):
        gpu_args = [a for k, v in gpu.items() for a in ("--conf", f"{k}={v}")] if task != "materialize" else []
        assert tasks[task]["command"] == [
            "spark-submit", "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=64", *gpu_args,
            "--packages", delta_jars, "--name", f"ugsep-{command}-{DS}",
            f"{ROOT}/cli/main.py", command, "--ds", DS, "--config", "/etc/ugsep/job.toml"]
        assert tasks[task]["env"] == {"PYSPARK_PYTHON": "/opt/ugsep/bin/python",
                                      "PYSPARK_DRIVER_PYTHON": "/opt/ugsep/bin/python"}
        assert tasks[task]["retries"] == 2


def test_a_per_run_config_only_where_the_operator_allows_it(tmp_path):
    """Off by default (above: the settings' config, no param); with config_override_dir the param picks
    the config and the CLI reads configs from that folder alone; the weekly maintenance DAG."""
    out = probe(tmp_path, {"config": "/etc/ugsep/runs/job.toml", "config_override_dir": "/etc/ugsep/runs"})
    task = out["tasks"]["user_stage"]
    assert task["command"][-2:] == ["--config", "/etc/ugsep/runs/job.toml"]
    assert task["env"]["UGSEP_CONFIG_ROOT"] == "/etc/ugsep/runs"
    assert out["maintain"]["timetable"] == "CronTriggerTimetable" and out["maintain"]["catchup"] is False
    assert out["maintain"]["command"][-6:] == ["maintain", "--vacuum-hours", "168", "--optimize",
                                               "--config", "/etc/ugsep/runs/job.toml"]
    bad = probe(tmp_path, {"config": "/etc/ugsep/job.toml", "config_override_dir": "/etc/ugsep/runs"})
    assert bad["dags"] == [] and "outside config_override_dir" in " ".join(bad["import_errors"].values())


def test_a_misspelled_setting_is_an_import_error_that_names_it(tmp_path):
    out = probe(tmp_path, {"gpu_confs": {}})
    assert out["dags"] == [] and "gpu_confs" in " ".join(out["import_errors"].values())


@pytest.mark.spark
def test_user_stage_runs_for_real_through_airflow_and_spark_submit(spark, tmp_path, model_dir):
    from pyspark.sql import functions as F

    from jobs.config import load_config
    from jobs.contracts import CANDIDATES, USER_STATE
    from jobs.generate import generate_tables

    conf = tmp_path / "job.toml"  # a relative warehouse: resolved against the config's folder
    conf.write_text(f'warehouse = "warehouse"\nmodel = "{model_dir}"\nusers_per_batch = 16\npartitions = 1\n'
                    '[spark]\n"spark.sql.shuffle.partitions" = "1"\n')
    cfg = load_config(str(conf))
    generate_tables(spark, cfg, DS, 10, mean_cands=3)
    env = airflow_env(tmp_path, {"config": str(conf), "python": sys.executable, "home": str(ROOT)})
    migrate = subprocess.run([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    run = subprocess.run([str(AIRFLOW_BIN / "airflow"), "tasks", "test", "ugsep_daily", "user_stage", DS],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert "new_state=success" in log, log[-5000:]  # `tasks test` exits 0 even when the task fails
    assert f"--ds {DS}" in log and "spark-submit --master local[2]" in log

    users = spark.read.format("delta").load(cfg.table_path(CANDIDATES)).where(F.col("ds") == DS) \
        .select("user_id").distinct().count()
    state = spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS)
    assert state.count() == users == state.select("user_id").distinct().count()
    assert json.loads(cfg.summary_path("user-stage", DS).read_text())["rows_out"] == users
