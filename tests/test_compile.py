"""torch.compile sees each model path as one graph: no graph breaks (fullgraph=True), no
recompiles across batch sizes, and the same logits as eager (CPU; the Triton path is CUDA's)."""

import dataclasses

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from ugsep.data.synthetic import synthetic_spec
from ugsep.features import PAD_ID, DensePolicy, FeatureSpec, Field, FieldKind
from ugsep.model import ModelConfig, RankingModel

SMALL = dict(d_model=32, n_user_tokens=2, n_group_tokens=2, n_layers=2, head_hidden=16)
SIZES = [(3, 7), (9, 6), (6, 11)]  # (users, candidates per user): three shapes, one graph
MIXED = FeatureSpec(  # kinds interleaved, in another order than the synthetic spec's
    user_fields=(Field("a", "dense"), Field("b", "multi", buckets=7, dim=3, max_len=4),
                 Field("c", "categorical", buckets=11, dim=5), Field("d", "dense")),
    item_fields=(Field("e", "multi", buckets=5, dim=4, max_len=2), Field("f", "dense"),
                 Field("g", "categorical", buckets=13, dim=6)),
)
CONFIGS = {
    "rankmixer-group": dict(arch="rankmixer", compensation=False, pool="group"),
    "rankmixer-all": dict(arch="rankmixer", compensation=False, pool="all"),
    "ugsep-comp-group": dict(arch="ugsep", compensation=True, pool="group"),
    "ugsep-comp-all": dict(arch="ugsep", compensation=True, pool="all"),
    "ugsep-nocomp-group": dict(arch="ugsep", compensation=False, pool="group"),
    "ugsep-nocomp-all": dict(arch="ugsep", compensation=False, pool="all"),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def random_side(fields: tuple[Field, ...], n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Raw field values as a batch carries them: ids out of range and negative, padded lists,
    dense values with NaN and inf (which the default CLAMP policy handles)."""
    out = {}
    for f in fields:
        if f.kind == FieldKind.CATEGORICAL:
            out[f.name] = torch.randint(-5, 3 * f.buckets, (n,), generator=gen)
        elif f.kind == FieldKind.MULTI:
            ids = torch.randint(0, 2 * f.buckets, (n, f.max_len), generator=gen)
            out[f.name] = torch.where(torch.rand(n, f.max_len, generator=gen) < 0.3, PAD_ID, ids)
        else:
            x = torch.randn(n, generator=gen) * 100
            x[torch.rand(n, generator=gen) < 0.1] = float("nan")
            x[torch.rand(n, generator=gen) < 0.1] = float("inf")
            out[f.name] = x
    return out


def batch(spec: FeatureSpec, n_users: int, per_user: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    users = random_side(spec.user_fields, n_users, gen)
    items = random_side(spec.candidate_fields, n_users * per_user, gen)
    return users, items, torch.arange(n_users).repeat_interleave(per_user)


def make(spec: FeatureSpec, **cfg) -> RankingModel:
    torch.manual_seed(0)
    model = RankingModel(spec, ModelConfig(**SMALL, **cfg)).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(20.0)  # logits spread well beyond the tolerance
    return model


def compiled(fn):
    """fn compiled as one graph (fullgraph: a graph break raises), counting what dynamo compiles."""
    counter = CompileCounter()
    return torch.compile(fn, backend=counter, fullgraph=True, dynamic=True), counter


def check_paths(model: RankingModel, spec: FeatureSpec) -> None:
    forward, n_forward = compiled(model)
    split = model.cfg.arch == "ugsep"
    if split:
        encode, n_encode = compiled(model.encode_users)
        score, n_score = compiled(model.score_groups)
    with torch.no_grad():
        for i, (n_users, per_user) in enumerate(SIZES):
            users, items, idx = batch(spec, n_users, per_user, seed=i)
            ref = model(users, items, idx)
            assert ref.std() > 0.1
            torch.testing.assert_close(forward(users, items, idx), ref, rtol=0, atol=1e-5)
            if split:
                state = encode(users)
                torch.testing.assert_close(state.to_flat(), model.encode_users(users).to_flat(), rtol=0, atol=1e-5)
                torch.testing.assert_close(score(state, items, idx), ref, rtol=0, atol=1e-5)
    assert n_forward.frame_count == 1  # one graph for every batch size: no recompiles
    if split:
        assert (n_encode.frame_count, n_score.frame_count) == (1, 1)


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_compiled_paths_are_one_graph_and_match_eager(cfg):
    check_paths(make(synthetic_spec(), **cfg), synthetic_spec())


@pytest.mark.parametrize("arch", ["rankmixer", "ugsep"])
def test_another_mix_of_field_kinds_is_one_graph_too(arch):
    check_paths(make(MIXED, arch=arch, pool="all"), MIXED)


def test_reject_policy_still_raises_under_compile():
    """REJECT reads a flag back to the host, so it breaks the graph (no fullgraph), but it keeps
    its error and the clean-data result."""
    spec = dataclasses.replace(MIXED, dense_policy=DensePolicy.REJECT)
    model = make(spec)
    fn = torch.compile(model, backend="eager")
    users, items, idx = batch(spec, 4, 3)
    users["a"], users["d"] = users["a"].nan_to_num(), users["d"].nan_to_num()
    items["f"] = items["f"].nan_to_num()
    with torch.no_grad():
        torch.testing.assert_close(fn(users, items, idx), model(users, items, idx), rtol=0, atol=1e-5)
        users["d"][1:3] = float("inf")
        with pytest.raises(ValueError, match="dense field 'd' has 2 NaN/inf values"):
            fn(users, items, idx)


def test_default_compile_mode_matches_eager():
    """torch.compile as a user would call it (inductor, default mode): one compile, eager's logits."""
    spec = synthetic_spec()
    model = make(spec)
    counter = torch._dynamo.utils.counters
    counter.clear()
    fn = torch.compile(model.score)
    users, items, idx = batch(spec, 3, 4)
    with torch.no_grad():
        ref = model.score(users, items, idx)
        torch.testing.assert_close(fn(users, items, idx), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(fn(users, items, idx), ref, rtol=0, atol=1e-5)
    assert counter["stats"]["unique_graphs"] == 1  # encode_users and score_groups inlined into one graph
