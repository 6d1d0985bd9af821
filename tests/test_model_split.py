"""Split inference (encode_users + score_groups) must equal the full forward; the public API."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_model
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ugsep.data.ranking_data import batch_tensors
from ugsep.model import ModelConfig, RankingModel, SplitInferenceError
from ugsep.state import UserState


@pytest.mark.parametrize("pool", ["group", "all"])
@pytest.mark.parametrize("compensation", [True, False])
def test_split_equals_full_forward(small_day, pool, compensation):
    model = make_model(pool=pool, compensation=compensation)
    users, items, idx, _ = batch_tensors(small_day, np.arange(len(small_day)))
    counts = np.bincount(idx.numpy())
    assert counts.min() == 1 and counts.max() >= 1000  # 1 candidate and thousands are covered
    with torch.no_grad():
        full = model(users, items, idx)
        split = model.score_groups(model.encode_users(users), items, idx)
    assert full.std() > 0.1  # logits are spread, so 1e-5 is a real bound
    torch.testing.assert_close(split, full, rtol=0, atol=1e-5)


@settings(max_examples=15, deadline=None)
@example(seed=4929, tokens=(1, 1), layers=3, pool="group")  # |logit| ~7.9: 1.0014e-5 apart in float32
@given(
    seed=st.integers(0, 10_000),
    tokens=st.sampled_from([(1, 1), (2, 2), (4, 4), (6, 2), (2, 6)]),
    layers=st.integers(1, 3),
    pool=st.sampled_from(["group", "all"]),
)
def test_split_equals_full_random_models(small_day, seed, tokens, layers, pool):
    tu, tg = tokens
    model = make_model(seed, n_user_tokens=tu, n_group_tokens=tg, d_model=8 * (tu + tg),
                       n_layers=layers, pool=pool, comp_rank=5)
    sel = np.random.default_rng(seed).choice(len(small_day), 300, replace=False)
    users, items, idx, _ = batch_tensors(small_day, sel)
    with torch.no_grad():
        state = UserState.from_flat(model.encode_users(users).to_flat(), model.state_layout)
        # the two paths sum in different orders: float32 rounding grows with the logit, so the
        # bound is 1e-5 plus a few float32 ulps (eps 1.2e-7) of the logit's magnitude
        torch.testing.assert_close(model.score_groups(state, items, idx), model(users, items, idx),
                                   rtol=1e-6, atol=1e-5)


def _final_user_tokens(model, data, shuffle_items: bool):
    """User-position outputs of the last block in the full forward, with items optionally shuffled."""
    users, items, idx, _ = batch_tensors(data, np.arange(50))
    if shuffle_items:
        perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))
        items = {k: v[perm] for k, v in items.items()}
    outs = []
    hook = model.blocks[-1].register_forward_hook(lambda m, i, o: outs.append(o[:, : model.cfg.n_user_tokens]))
    with torch.no_grad():
        model(users, items, idx)
    hook.remove()
    return outs[0]


def test_user_state_ignores_group_tokens_in_full_forward(small_day):
    """Under ugsep the candidate's items cannot change what user positions compute."""
    model = make_model()
    torch.testing.assert_close(_final_user_tokens(model, small_day, False),
                               _final_user_tokens(model, small_day, True), rtol=0, atol=0)


def test_rankmixer_user_tokens_do_see_items(small_day):
    """The control for the test above: without the mask, user positions read item content."""
    model = make_model(arch="rankmixer")
    diff = _final_user_tokens(model, small_day, False) - _final_user_tokens(model, small_day, True)
    assert diff.abs().max() > 1e-3


def test_state_without_compensation_changes_scores(small_day):
    """Compensation is live: dropping it from the state changes the logits."""
    model = make_model(compensation=True)
    users, items, idx, _ = batch_tensors(small_day, np.arange(200))
    with torch.no_grad():
        state = model.encode_users(users)
        state.comp = torch.zeros_like(state.comp)
        assert (model.score_groups(state, items, idx) - model(users, items, idx)).abs().max() > 1e-3


def test_rankmixer_refuses_split_api(small_day):
    model = make_model(arch="rankmixer")
    users, items, idx, _ = batch_tensors(small_day, np.arange(10))
    with pytest.raises(SplitInferenceError, match="no user-only state"):
        model.encode_users(users)
    with pytest.raises(SplitInferenceError):
        model.score_groups(None, items, idx)


def test_flat_state_has_fixed_width_and_roundtrips(small_day):
    model = make_model(pool="all")
    users, _, _, _ = batch_tensors(small_day, np.arange(100))
    state = model.encode_users(users)
    flat = state.to_flat()
    assert flat.shape == (len(users["user_id"]), model.state_layout.width)
    back = UserState.from_flat(flat, model.state_layout)
    for a, b in [(state.heads, back.heads), (state.comp, back.comp), (state.pooled, back.pooled)]:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expects"):
        UserState.from_flat(flat[:, :-1], model.state_layout)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_user_tokens=4, n_group_tokens=4)
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(arch="dlrm")


def test_flops_ratio_matches_token_counts():
    """At N candidates per user with T_u = T_g the FFN work ratio approaches 2N/(N+1)."""
    rm, us = make_model(arch="rankmixer", compensation=False), make_model(compensation=False)
    ratio = rm.flops_per_candidate(100) / us.flops_per_candidate(100)
    assert 1.7 < ratio < 2.0
    assert rm.flops_per_candidate(1) == pytest.approx(us.flops_per_candidate(1))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the addmm path of PerTokenLinear is taken on CUDA only"))])
def test_per_position_addmm_equals_the_batched_product(device):
    from ugsep.layers import ADDMM_MIN_ROWS, PerTokenLinear, per_position_addmm

    torch.manual_seed(0)
    lin = PerTokenLinear(3, 32, 24).to(device)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(ADDMM_MIN_ROWS + 5, 3, 32, device=device)
    ref = torch.baddbmm(lin.bias.unsqueeze(1), x.transpose(0, 1), lin.weight).transpose(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(per_position_addmm(x.transpose(0, 1), lin.weight, lin.bias).transpose(0, 1), ref)
        torch.testing.assert_close(lin(x[:, 1:3], slice(1, 3)), ref[:, 1:3])


def test_ffn_one_position_at_a_time_equals_the_batched_form():
    """CPU inference in bf16 runs PerTokenFFN one position at a time; it must compute what the
    batched form computes (and float32 or training keep the batched form)."""
    import torch.nn.functional as F

    from ugsep.layers import PerTokenFFN

    torch.manual_seed(0)
    ffn = PerTokenFFN(4, 32, 3).bfloat16()
    with torch.no_grad():
        ffn.fc1.bias.normal_()
        ffn.fc2.bias.normal_()
    x = torch.randn(50, 2, 32, dtype=torch.bfloat16)  # the positions 1:3 of 4

    def batched(x):  # fc1 -> GELU -> fc2 of positions 1:3, each position's own weights
        w1, b1, w2, b2 = ffn.fc1.weight[1:3], ffn.fc1.bias[1:3], ffn.fc2.weight[1:3], ffn.fc2.bias[1:3]
        h = F.gelu(torch.baddbmm(b1.unsqueeze(1).float(), x.transpose(0, 1).float(), w1.float()))
        return torch.baddbmm(b2.unsqueeze(1).float(), h, w2.float()).transpose(0, 1)

    with torch.no_grad():
        assert ffn._one_position_at_a_time(x.transpose(0, 1))
        assert not ffn._one_position_at_a_time(x.transpose(0, 1).float())
        out = ffn(x, slice(1, 3))
    assert out.shape == (50, 2, 32) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), batched(x), atol=0.01, rtol=0.008)
    with torch.enable_grad():
        assert not ffn._one_position_at_a_time(x.transpose(0, 1))
        torch.testing.assert_close(ffn(x, slice(1, 3)).float(), out.float(), atol=0.02, rtol=0.01)
    seen = []  # a forward hook (FP8 calibration's) sees both products, whichever form runs
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape)) for m in (ffn.fc1, ffn.fc2)]
    with torch.no_grad():
        assert not ffn._one_position_at_a_time(x)
        torch.testing.assert_close(ffn(x, slice(1, 3)), out, atol=0.02, rtol=0.01)
    for h in hooks:
        h.remove()
    assert seen == [(50, 2, 32), (50, 2, 96)]


def test_public_api():
    import ugsep
    import ugsep.quant

    assert set(ugsep.__all__) == set(ugsep._HOMES)
    for name in ugsep.__all__:
        assert getattr(ugsep, name) is not None
    assert ugsep.RankingModel is RankingModel and ugsep.SplitInferenceError is SplitInferenceError
    assert ugsep.quant.Backend is ugsep.Backend
    for name in ugsep.quant.__all__:
        assert getattr(ugsep.quant, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ugsep.nope  # noqa: B018


def test_imports_stay_light():
    """ugsep.features (used on Spark's side) needs no torch; nothing imports Triton."""
    code = ("import sys, ugsep.features; light = 'torch' not in sys.modules; import ugsep, ugsep.quant; "
            "ugsep.RankingModel, ugsep.load_checkpoint, ugsep.quant.quantize_model; "
            "print(light, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def test_the_fm_term_is_every_field_pair_and_splits_exactly(small_day):
    """The FM logit equals the brute-force sum over all field pairs (user and candidate fields
    together) plus the first-order weights, and the split path gives the full forward's logits."""
    from ugsep.fm import fm_logit
    from ugsep.tokenizer import embed_ids

    model = make_model(fm_dim=8, pool="all")
    with torch.no_grad():
        for side in (model.user_fm, model.item_fm):
            for t in side.tables.values():
                t.weight.mul_(30.0)  # an FM term large enough to matter in the comparison
    sel = np.random.default_rng(1).choice(len(small_day), 400, replace=False)
    users, items, idx, _ = batch_tensors(small_day, sel)
    with torch.no_grad():
        got = fm_logit(model.user_fm(users)[idx], model.item_fm(items))
        vecs = [embed_ids(side.tables[n], k, b, (users[n][idx] if side is model.user_fm else items[n]))
                for side in (model.user_fm, model.item_fm) for n, k, b in side.plan]  # each (N, k + 1)
        want = sum(v[:, -1] for v in vecs)
        for i in range(len(vecs)):
            for j in range(i + 1, len(vecs)):
                want = want + (vecs[i][:, :-1] * vecs[j][:, :-1]).sum(-1)
        assert want.std() > 1.0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)

        full = model(users, items, idx)
        state = UserState.from_flat(model.encode_users(users).to_flat(), model.state_layout)
        torch.testing.assert_close(model.score_groups(state, items, idx), full, rtol=1e-6, atol=1e-5)
        assert model.state_layout.fm_width == 9 and state.fm.shape == (len(users["user_id"]), 9)
        model.item_fm.tables["item_id"].weight.zero_()
        assert (model(users, items, idx) - full).abs().max() > 0.1  # the term reaches the logit
