"""A Spark standalone cluster on this machine: one master and N workers, each its own JVM.

Started from the installed PySpark's own launcher, ``bin/spark-class`` with the Master and
Worker classes (the pip package has no ``sbin/start-*.sh`` scripts). Spark's
``local-cluster[N,cores,memory]`` mode also runs from the pip install, but its master and
workers live inside the one application's driver JVM: it cannot outlive the application,
serve several ``spark-submit``s, be started by hand, or give each worker its own GPU
discovery script. A standalone cluster is what users submit to.

Everything binds to 127.0.0.1. The tests start and stop one; ``ugsep cluster start|stop|status``
does the same by hand. What was started is kept in ``<root>/cluster.json``: the master URL,
the web UI and the pids.

Workers can advertise fake ``gpu`` resources (a discovery script per worker that reports its
own addresses), so Spark's GPU scheduling runs for real on CPU-only machines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "cluster.json"
HOST = "127.0.0.1"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


class ClusterError(RuntimeError):
    """The cluster did not start (or is not running); the message names its logs."""


@dataclass
class LocalCluster:
    root: str  # folder of the state file, the logs and the workers' work dirs (executor logs)
    master_url: str  # spark://127.0.0.1:PORT, what spark-submit --master takes
    ui_url: str  # the master's web UI; /json/ describes the workers
    workers: int
    cores: int  # per worker (and per executor: one executor per worker)
    memory: str  # per worker
    gpus: int  # fake gpu addresses per worker (0: none advertised)
    pids: dict[str, int] = field(default_factory=dict)  # master, worker-0, ...

    def spark_conf(self) -> dict[str, str]:
        """What an application sets to run here: one executor per worker with all its cores,
        a GPU per executor where the workers advertise them, and as many shuffle and Delta
        snapshot partitions as the cluster has cores (Spark's defaults, 200 and 50, are sized
        for big clusters and cost seconds per query here)."""
        cores = str(self.workers * self.cores)
        conf = {"spark.master": self.master_url, "spark.executor.cores": str(self.cores),
                "spark.executor.memory": EXECUTOR_MEMORY, "spark.driver.host": HOST,
                "spark.driver.bindAddress": HOST, "spark.sql.shuffle.partitions": cores,
                "spark.databricks.delta.snapshotPartitions": cores,
                "spark.driver.extraJavaOptions": JVM_OPTIONS, "spark.executor.extraJavaOptions": JVM_OPTIONS}
        if self.gpus:
            conf["spark.executor.resource.gpu.amount"] = "1"
        return conf

    def submit_command(self) -> list[str]:
        """``spark-submit`` to this cluster with the Delta jars and ``spark_conf``; the
        application and its arguments follow."""
        from jobs.spark_session import delta_packages

        conf = self.spark_conf()
        return [str(Path(sys.executable).with_name("spark-submit")), "--master", conf.pop("spark.master"),
                "--packages", delta_packages(), *[a for k, v in conf.items() for a in ("--conf", f"{k}={v}")]]

    def work_dir(self) -> Path:
        """Where each worker keeps its executors' stdout and stderr: work/<app id>/<executor id>/."""
        return Path(self.root) / "work"

    def state(self) -> dict:
        """The master's own view: workers (alive, cores, resources) and applications."""
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as r:
            return json.load(r)

    def executor_pids(self) -> list[int]:
        """The executor JVMs the workers of this cluster run now."""
        workers = {p for name, p in self.pids.items() if name.startswith("worker")}
        return [pid for pid in _pids_with(EXECUTOR_CLASS) if _parent(pid) in workers]


def conf_for_master(master: str, root: str | Path = "runs/cluster") -> dict[str, str]:
    """The application settings for ``master``: those of the cluster `start_cluster` made at
    ``root`` when it has that URL, else the master alone."""
    made = read_cluster(root) if master.startswith("spark://") else None
    return made.spark_conf() if made is not None and made.master_url == master else {"spark.master": master}


EXECUTOR_MEMORY = "1g"
# Short jobs on small JVMs: the client compiler only (C1) gets planning and Delta's log code
# fast sooner than tiered compilation, which spends these cores on C2 compiles a job of a few
# seconds never profits from.
JVM_OPTIONS = "-XX:+UseParallelGC -XX:TieredStopAtLevel=1"
DAEMON_MEMORY = "512m"  # the master's and workers' own heaps (Spark's default is 1g each)


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def launcher_env() -> dict[str, str]:
    """The environment of the daemons and of applications submitted to them: this machine's
    loopback only, and Python workers running this interpreter."""
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST,
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY, "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}


def start_cluster(root: str | Path, workers: int = 2, cores: int = 1, memory: str = "2g", gpus: int = 0,
                  timeout: float = 90.0) -> LocalCluster:
    """Start a master and ``workers`` workers and wait until every worker has registered.
    A cluster already running at ``root`` is an error (stop it first)."""
    root = Path(root).resolve()
    if read_cluster(root) is not None:
        raise ClusterError(f"a cluster is already running from {root / STATE_FILE}; `ugsep cluster stop` it first")
    if workers < 1 or cores < 1 or gpus < 0:
        raise ValueError(f"a cluster needs workers >= 1, cores >= 1 and gpus >= 0, got {workers}, {cores}, {gpus}")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    port, ui_port = _free_port(), _free_port()
    cluster = LocalCluster(str(root), f"spark://{HOST}:{port}", f"http://{HOST}:{ui_port}", workers, cores, memory,
                           gpus)
    try:
        cluster.pids["master"] = _launch(root, "master", "org.apache.spark.deploy.master.Master",
                                         ["--host", HOST, "--port", str(port), "--webui-port", str(ui_port)])
        for i in range(workers):
            props = _worker_properties(root, i, gpus)
            cluster.pids[f"worker-{i}"] = _launch(
                root, f"worker-{i}", "org.apache.spark.deploy.worker.Worker",
                [cluster.master_url, "--host", HOST, "--cores", str(cores), "--memory", memory,
                 "--work-dir", str(cluster.work_dir()), "--webui-port", str(_free_port()),
                 "--properties-file", str(props)])
        (root / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2))
        _wait_for_workers(cluster, timeout)
    except BaseException:
        _kill(cluster.pids.values())
        (root / STATE_FILE).unlink(missing_ok=True)
        raise
    return cluster


def read_cluster(root: str | Path) -> LocalCluster | None:
    """The cluster started from ``root`` if its master still runs (a stale state file is removed)."""
    path = Path(root).resolve() / STATE_FILE
    if not path.exists():
        return None
    cluster = LocalCluster(**json.loads(path.read_text()))
    if not _alive(cluster.pids.get("master", -1)):
        _kill(cluster.pids.values())
        path.unlink(missing_ok=True)
        return None
    return cluster


def stop_cluster(root: str | Path) -> bool:
    """Stop the cluster started from ``root`` (its executors go with their workers); False if none ran."""
    cluster = read_cluster(root)
    if cluster is None:
        return False
    _kill([*cluster.executor_pids(), *cluster.pids.values()])
    (Path(cluster.root) / STATE_FILE).unlink(missing_ok=True)
    return True


def _worker_properties(root: Path, index: int, gpus: int) -> Path:
    """The worker's Spark properties; with ``gpus``, a discovery script reporting fake addresses
    of its own (worker i has i*gpus ... i*gpus+gpus-1, as two cards of one host would)."""
    props = root / f"worker-{index}.properties"
    lines = []
    if gpus:
        script = root / f"gpus-worker-{index}.sh"
        found = json.dumps({"name": "gpu", "addresses": [str(index * gpus + j) for j in range(gpus)]})
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{found}\nEOF\n")
        script.chmod(0o755)
        lines += [f"spark.worker.resource.gpu.amount {gpus}", f"spark.worker.resource.gpu.discoveryScript {script}"]
    props.write_text("".join(f"{line}\n" for line in lines))
    return props


def _launch(root: Path, name: str, main_class: str, args: list[str]) -> int:
    log = open(root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the daemon keeps it)
    cmd = [str(spark_home() / "bin" / "spark-class"), main_class, *args]
    # its own session: a Ctrl-C of whoever started it does not stop the cluster
    proc = subprocess.Popen(cmd, env=launcher_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    return proc.pid


def _wait_for_workers(cluster: LocalCluster, timeout: float) -> None:
    deadline, alive, why = time.monotonic() + timeout, 0, ""
    while time.monotonic() < deadline:
        dead = [name for name, pid in cluster.pids.items() if not _alive(pid)]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited while starting; see {Path(cluster.root) / 'logs'}")
        try:
            alive = cluster.state().get("aliveworkers", 0)
            if alive >= cluster.workers:
                return
        except OSError as e:  # the master's UI is not up yet
            why = str(e)
        time.sleep(0.5)
    raise ClusterError(f"{alive} of {cluster.workers} workers registered with {cluster.master_url} within "
                       f"{timeout:.0f}s ({why or 'the master is up'}); see {Path(cluster.root) / 'logs'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    status = Path(f"/proc/{pid}/stat")  # a zombie (exited, not yet reaped) is not alive
    return not status.exists() or status.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pids, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still running after ``grace`` seconds."""
    pids = [p for p in pids if _alive(p)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _pids_with(needle: str) -> list[int]:
    """Processes whose command line holds ``needle`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def executor_of(pid: int) -> int | None:
    """The executor JVM a process (a Python worker of a task) runs under, if any."""
    while pid > 1:
        try:
            if EXECUTOR_CLASS.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            return None
        pid = _parent(pid)
    return None
