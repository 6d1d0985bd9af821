"""Cluster commands: a Spark standalone cluster on this machine (`jobs.cluster`) to submit jobs to."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

ROOT_HELP = "folder of the cluster's state file, logs and work dirs (default: runs/cluster)"


def cmd_cluster(a: argparse.Namespace) -> int:
    from jobs import cluster

    if a.action == "start":
        c = cluster.start_cluster(a.root, workers=a.workers, cores=a.cores, memory=a.memory, gpus=a.gpus)
        print(f"cluster up: {c.master_url} ({c.workers} workers x {c.cores} cores, {c.memory}"
              f"{f', {c.gpus} fake gpu(s) each' if c.gpus else ''}); web UI {c.ui_url}; logs {c.root}/logs")
        print("submit a job to it:\n  " + submit_line(c))
        return 0
    if a.action == "stop":
        print("cluster stopped" if cluster.stop_cluster(a.root) else f"no cluster is running from {a.root}")
        return 0
    c = cluster.read_cluster(a.root)
    if c is None:
        print(f"no cluster is running from {a.root}")
        return 5
    state = c.state()
    print(json.dumps({"master": c.master_url, "ui": c.ui_url, "alive_workers": state.get("aliveworkers"),
                      "cores": state.get("cores"), "cores_used": state.get("coresused"),
                      "applications": [app["id"] for app in state.get("activeapps", [])],
                      "submit": submit_line(c)}, indent=2))
    return 0


def submit_line(c) -> str:
    """The spark-submit command line of `ugsep run` against cluster ``c``."""
    cmd = [*c.submit_command(), "cli/main.py", "run", "--ds", "YYYY-MM-DD", "--config", "job.toml"]
    return f"SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON={sys.executable} {shlex.join(cmd)}"


def register(sub) -> None:
    p = sub.add_parser("cluster", help="start, stop or inspect a Spark standalone cluster on this machine",
                       description="A Spark master and workers on 127.0.0.1, each its own JVM, started from the "
                                   "installed PySpark (spark-class). `start` prints the spark-submit line for it; "
                                   "`status` exits 5 when none runs.")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--root", default="runs/cluster", help=ROOT_HELP)
    p.add_argument("--workers", type=int, default=2, help="workers (one executor each); default 2")
    p.add_argument("--cores", type=int, default=1, help="cores per worker; default 1")
    p.add_argument("--memory", default="2g", help="memory per worker for its executor; default 2g")
    p.add_argument("--gpus", type=int, default=0,
                   help="fake GPU addresses per worker, reported by a discovery script (exercises Spark's GPU "
                        "scheduling on CPU machines); default 0")
    p.set_defaults(func=cmd_cluster)
