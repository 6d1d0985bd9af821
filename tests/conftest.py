import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

from ugsep.data.synthetic import synthetic_dataset, synthetic_spec
from ugsep.model import ModelConfig, RankingModel


@pytest.fixture(scope="session")
def small_day():
    """~40 users, user 0 with 1500 candidates and user 1 with exactly one."""
    return synthetic_dataset(40, seed=3, max_cands=1500, n_items=2500)


def make_model(seed: int = 0, **cfg) -> RankingModel:
    """A random model whose logits spread well beyond the tolerance used in equality tests."""
    torch.manual_seed(seed)
    model = RankingModel(synthetic_spec(), ModelConfig(**cfg))
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)
    return model.eval()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session with Delta for the whole run (3 attempts per task, so
    the fault-injection test can see a retry)."""
    from jobs.spark_session import build_spark

    session = build_spark("ugsep-tests", {"spark.master": "local[2,3]", "spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from ugsep.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model")
    save_checkpoint(make_model(seed=5), path)
    return str(path)


@pytest.fixture
def job_cfg(tmp_path, model_dir):
    from jobs.config import JobConfig

    return JobConfig(warehouse=str(tmp_path / "warehouse"), model=model_dir, users_per_batch=16, partitions=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis_server(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real redis-server on loopback (no persistence), answering before this returns; skips
    the test where redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server; "
                    "this machine could not)")
    port = port or free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def redis_server():
    """host:port of a redis-server of this test module's own."""
    proc, address = start_redis_server()
    yield address
    proc.terminate()
    proc.wait(10)
