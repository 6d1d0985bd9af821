"""Airflow DAGs: `ugsep_daily` (user-stage -> materialize -> score-stage for each logical date)
and `ugsep_maintain` (weekly VACUUM and OPTIMIZE of the pipeline's tables).

The same pipeline as the cron script's `ugsep run --materialize`, one task per step so a
failed step retries alone; both read every job setting (tables, model, online store) from
the one job config (TOML).

Drop this file into Airflow's ``dags/`` folder. Each task is a ``spark-submit`` of the ugsep CLI
(``cli/main.py``) with ``--ds {{ ds }}``, so the day scored is the logical date of the run and
``catchup`` / ``airflow backfill create`` fill past days. Every job replaces its day, so a retry
or a rerun of a day never duplicates rows.

Settings come from the Airflow Variable ``ugsep`` (JSON; every key optional, defaults below):

    home         folder of the ugsep checkout on the worker (cli/main.py lives there)
    python       interpreter with ugsep installed (driver and executors' Python)
    config       job config (TOML) of every run
    config_override_dir  a folder: lets whoever triggers a run pick its config (the param
                 ``config``) among the files there; empty (the default): no per-run config
    conn_id      Spark connection (its host is the master: local[*], yarn, spark://..., k8s://...)
    packages     Maven coordinates of the Delta jars for spark-submit --packages
    spark_conf   Spark settings for every task
    gpu_conf     Spark settings for the model stages only (user-stage, score-stage), e.g.
                 {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.25"}
    start_date   first logical date (YYYY-MM-DD)
    schedule     cron expression (default "0 6 * * *"): each run scores the day its data interval starts
    max_active_runs, retries, retry_minutes
    maintain_schedule, vacuum_hours   the weekly DAG ``ugsep_maintain`` (VACUUM, OPTIMIZE)

``spark-submit`` must be on the worker's PATH (the provider only runs that name): with the pip
install of pyspark it is ``<home>/.venv/bin/spark-submit``.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.timetables.trigger import CronTriggerTimetable

try:  # Airflow 3
    from airflow.sdk import DAG, Param, Variable, chain
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.models import Variable
    from airflow.models.baseoperator import chain
    from airflow.models.param import Param

HOME = os.environ.get("UGSEP_HOME", str(Path(__file__).resolve().parents[2]))
DEFAULTS: dict = {
    "home": HOME,
    "python": f"{HOME}/.venv/bin/python",
    "config": f"{HOME}/job.toml",
    "conn_id": "spark_default",
    "packages": "io.delta:delta-spark_4.1_2.13:4.4.0",  # what configure_spark_with_delta_pip asks for
    "spark_conf": {},
    "gpu_conf": {},
    "start_date": "2026-11-01",
    "schedule": "0 6 * * *",
    "max_active_runs": 1,
    "retries": 2,
    "retry_minutes": 10,
    "config_override_dir": "",
    "maintain_schedule": "0 3 * * 0",
    "vacuum_hours": 168,
}
DAILY_STEPS = ("user-stage", "materialize", "score-stage")  # what `ugsep run --materialize` runs, in order
MODEL_STAGES = ("user-stage", "score-stage")


def load_settings() -> dict:
    """DEFAULTS overlaid with the Airflow Variable ``ugsep`` (JSON), read once per DAG parse."""
    try:
        given = Variable.get("ugsep", default=None, deserialize_json=True)
    except TypeError:  # Airflow 2 spells the default `default_var`
        given = Variable.get("ugsep", default_var=None, deserialize_json=True)
    unknown = sorted(set(given or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Airflow Variable 'ugsep': unknown keys {unknown}; known keys are {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **(given or {})}
    root = s["config_override_dir"]
    if root and not Path(s["config"]).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"Airflow Variable 'ugsep': config {s['config']} is outside config_override_dir {root}")
    return s


def spark_task(command: str, s: dict, args: list[str]) -> SparkSubmitOperator:
    """One `ugsep <command> <args> --config ...` through spark-submit. Whoever may trigger a run
    may pick its job config only where the operator allows it (``config_override_dir``), and the
    CLI then reads configs from that folder alone ($UGSEP_CONFIG_ROOT); a config file can never
    make Spark run code (see jobs/config.py)."""
    conf = {**s["spark_conf"], **(s["gpu_conf"] if command in MODEL_STAGES else {})}
    env = {"PYSPARK_PYTHON": s["python"], "PYSPARK_DRIVER_PYTHON": s["python"]}
    config = s["config"]
    if s["config_override_dir"]:
        config, env["UGSEP_CONFIG_ROOT"] = "{{ params.config }}", s["config_override_dir"]
    return SparkSubmitOperator(
        task_id=command.replace("-", "_"),
        conn_id=s["conn_id"],
        application=f"{s['home']}/cli/main.py",
        application_args=[command, *args, "--config", config],
        name=f"ugsep-{command}" + ("-{{ ds }}" if "--ds" in args else ""),
        packages=s["packages"],
        conf=conf,
        env_vars=env,
    )


def shared_dag_args(s: dict) -> dict:
    """What both DAGs take from the settings: start, retries, the per-run config param (if allowed)."""
    params = {}
    if s["config_override_dir"]:
        params["config"] = Param(s["config"], type="string",
                                 description=f"job config (TOML) for this run, under {s['config_override_dir']}")
    return {"start_date": dt.datetime.fromisoformat(s["start_date"]).replace(tzinfo=dt.UTC),
            "default_args": {"retries": int(s["retries"]), "owner": "ugsep",
                             "retry_delay": dt.timedelta(minutes=float(s["retry_minutes"]))},
            "params": params, "tags": ["ugsep", "spark"]}


settings = load_settings()

with DAG(
    dag_id="ugsep_daily",
    description="UG-Sep daily scoring: user-side state once per user, then score every user's items",
    # data intervals, not Airflow 3's default CronTriggerTimetable: the run that fires on day D+1
    # at 06:00 has the interval [D, D+1) and ds = D, the day whose candidates are complete
    schedule=CronDataIntervalTimetable(settings["schedule"], timezone="UTC"),
    catchup=True,
    max_active_runs=int(settings["max_active_runs"]),
    **shared_dag_args(settings),
) as dag:
    chain(*(spark_task(step, settings, ["--ds", "{{ ds }}"]) for step in DAILY_STEPS))

with DAG(
    dag_id="ugsep_maintain",
    description="Weekly Delta housekeeping of the pipeline's tables: VACUUM and OPTIMIZE",
    schedule=CronTriggerTimetable(settings["maintain_schedule"], timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    **shared_dag_args(settings),
) as maintain_dag:
    spark_task("maintain", settings, ["--vacuum-hours", str(settings["vacuum_hours"]), "--optimize"])
