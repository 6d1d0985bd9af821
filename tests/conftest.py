import subprocess

import local_redis
import numpy as np
import pytest
import torch
from local_redis import free_port  # noqa: F401  (the tests import it from here)

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


def start_redis_server(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """``local_redis.start_redis_server``; skips the test where redis-server is not installed."""
    proc, address = local_redis.start_redis_server(port)
    if proc is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server; "
                    "this machine could not)")
    return proc, address


@pytest.fixture(scope="module")
def redis_server():
    """host:port of a redis-server of this test module's own."""
    proc, address = start_redis_server()
    yield address
    proc.terminate()
    proc.wait(10)
