"""Run with the Airflow venv's Python: load the DAG folder and print, as JSON, what the tests check.

Output: import errors, the DAG's settings, each task's upstream ids, and the spark-submit command
line each task would run for the logical date given as argv[2] (templates rendered, connection
resolved by the Spark provider's own hook).
"""

import json
import sys

from airflow.dag_processing.dagbag import DagBag


def first_runs(dag, n: int) -> list[dict]:
    """The first ``n`` scheduled runs: logical date (what {{ ds }} renders), interval, when it fires."""
    from airflow.timetables.base import TimeRestriction

    runs, last = [], None
    for _ in range(n):
        info = dag.timetable.next_dagrun_info(last_automated_data_interval=last,
                                              restriction=TimeRestriction(dag.start_date, None, True))
        last = info.data_interval
        runs.append({"ds": info.logical_date.strftime("%Y-%m-%d"), "start": last.start.isoformat(),
                     "end": last.end.isoformat(), "fires": info.run_after.isoformat()})
    return runs


def main(dag_folder: str, ds: str) -> None:
    bag = DagBag(dag_folder=dag_folder)
    out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags)}
    dag = bag.dags.get("ugsep_daily")
    if dag is not None:
        out.update(catchup=dag.catchup, max_active_runs=dag.max_active_runs, timetable=type(dag.timetable).__name__,
                   start_date=dag.start_date.isoformat(), tasks={}, first_runs=first_runs(dag, 3))
        for task in dag.tasks:
            task.render_template_fields({"ds": ds, "params": dag.params.dump()})
            hook = task._get_hook()  # the operator's own hook and command builder: what execute() runs
            out["tasks"][task.task_id] = {
                "upstream": sorted(task.upstream_task_ids),
                "retries": task.retries,
                "command": hook._build_spark_submit_command(task.application),
                "env": task.env_vars,
            }
    weekly = bag.dags.get("ugsep_maintain")
    if weekly is not None:
        (task,) = weekly.tasks
        task.render_template_fields({"ds": ds, "params": weekly.params.dump()})
        out["maintain"] = {"timetable": type(weekly.timetable).__name__, "catchup": weekly.catchup,
                           "command": task._get_hook()._build_spark_submit_command(task.application)}
    print("PROBE " + json.dumps(out))  # Airflow logs to stdout too; the test reads this line


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
