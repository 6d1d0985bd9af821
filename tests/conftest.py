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
