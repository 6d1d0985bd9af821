"""Run with the Airflow venv's Python: load the DAG folder and print, as JSON, what the tests check.

Output: import errors, the DAG's settings, each task's upstream ids, and the spark-submit command
line each task would run for the logical date given as argv[2] (templates rendered, connection
resolved by the Spark provider's own hook).
"""

import json
import sys

from airflow.dag_processing.dagbag import DagBag


def main(dag_folder: str, ds: str) -> None:
    bag = DagBag(dag_folder=dag_folder)
    out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags)}
    dag = bag.dags.get("ugsep_daily")
    if dag is not None:
        out.update(catchup=dag.catchup, max_active_runs=dag.max_active_runs, schedule=str(dag.schedule),
                   start_date=dag.start_date.isoformat(), tasks={})
        for task in dag.tasks:
            task.render_template_fields({"ds": ds, "params": dag.params.dump()})
            hook = task._get_hook()  # the operator's own hook and command builder: what execute() runs
            out["tasks"][task.task_id] = {
                "upstream": sorted(task.upstream_task_ids),
                "retries": task.retries,
                "command": hook._build_spark_submit_command(task.application),
                "env": task.env_vars,
            }
    print("PROBE " + json.dumps(out))  # Airflow logs to stdout too; the test reads this line


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
