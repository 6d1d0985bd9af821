"""build_spark under spark-submit (how the Airflow DAG runs every job): the submitted master and
settings win over the one-machine defaults, and the job config's settings still apply."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.spark_session import delta_packages

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json
from jobs.spark_session import build_spark
spark = build_spark("submit-probe", {"spark.sql.session.timeZone": "UTC"})
keys = ("spark.master", "spark.sql.shuffle.partitions", "spark.sql.codegen.cache.maxEntries",
        "spark.sql.session.timeZone", "spark.sql.extensions")
print("PROBE " + json.dumps({k: spark.conf.get(k, None) for k in keys}))
spark.stop()
"""


@pytest.mark.spark
def test_spark_submit_master_and_conf_are_kept(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [str(Path(sys.executable).with_name("spark-submit")), "--master", "local[1]",
           "--packages", delta_packages(), "--conf", "spark.sql.shuffle.partitions=7", str(probe)]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert got["spark.master"] == "local[1]"  # not replaced by local[*]
    assert got["spark.sql.shuffle.partitions"] == "7"  # not replaced by the local default 8
    assert got["spark.sql.codegen.cache.maxEntries"] == "2000"  # a local default nobody set: kept
    assert got["spark.sql.session.timeZone"] == "UTC"  # the job config's own settings
    assert got["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
