"""CollectiveKV on HyFormer's sequence K/V: the state keeps indices and user dims only, routing,
the training losses, the sizes (split == full with it: tests/test_hyformer.py)."""

import copy

import numpy as np
import pytest
import torch
from test_hyformer import L, batch, hyformer, split_and_full

from ugsep.collective_kv import CollectiveKV
from ugsep.config import ModelConfig, TrainConfig
from ugsep.data.synthetic import synthetic_sequence_dataset, synthetic_sequence_spec
from ugsep.model import RankingModel
from ugsep.state import StateLayout, UserState
from ugsep.train import train_model


def ckv_model(seed: int = 0, **cfg) -> torch.nn.Module:
    return hyformer(seed, collective_kv=True, kv_pool_size=cfg.pop("kv_pool_size", 1000), **cfg)


def test_the_state_keeps_indices_and_user_dims_instead_of_kv():
    model = ckv_model(kv_pool_size=5000, kv_user_dim=3)
    users, _, _ = batch([0, 4, L], [1, 1, 1])
    with torch.no_grad():
        state = model.encode_users(users)
    assert state.kv is None
    assert state.kv_index.shape == (3, 2, 2, L) and state.kv_index.dtype == torch.int64  # (B, layers, K|V, L)
    assert state.kv_user.shape == (3, 2, 2, L, 3)
    assert int(state.kv_index.max()) < 5000
    back = UserState.from_flat(state.to_flat(), model.state_layout)
    assert torch.equal(back.kv_index, state.kv_index)  # indices above 256 survive the float32 flat form
    assert "kv" not in model.state_layout.parts


def test_routing_picks_the_top_pool_row_and_expand_gathers_it():
    ckv = CollectiveKV(d_model=8, pool_size=5, user_dim=2).eval()
    h = torch.randn(2, 3, 8)
    with torch.no_grad():
        idx, user, gate = ckv.compress(h, torch.ones(2, 3, dtype=torch.bool))
        kv = ckv.expand(idx, user)
        routed = (h - ckv.route_mean) / torch.sqrt(ckv.route_var + 1e-5)  # norm(H), running statistics
        logits_k = routed @ ckv.router.weight[:5].T + ckv.router.bias[:5]
    assert gate is None
    assert torch.equal(idx[:, 0], logits_k.argmax(-1))
    assert torch.equal(kv[1, 0, 2, :6], ckv.pool[0, idx[1, 0, 2]])  # K's shared part: the routed pool row
    torch.testing.assert_close(kv[1, 1, 2, 6:], torch.nn.functional.silu(h[1, 2] @ ckv.user.weight[2:].T
                                                                          + ckv.user.bias[2:]))


def test_events_sharing_a_large_component_still_spread_over_the_pool():
    """200 events = one shared vector + small differences: routed on H itself one row would win
    everywhere; norm(H) takes the shared part out, so the events spread over many rows."""
    torch.manual_seed(0)
    ckv = CollectiveKV(d_model=16, pool_size=64, user_dim=2)
    h = 50.0 * torch.randn(16) + torch.randn(4, 50, 16)  # (B, L, D)
    valid = torch.ones(4, 50, dtype=torch.bool)
    with torch.no_grad():
        idx = ckv.train().compress(h, valid)[0]  # this batch's statistics
        raw = (h @ ckv.router.weight[:64].T + ckv.router.bias[:64]).argmax(-1)  # routed on H as is
        for _ in range(150):  # the running statistics converge to the batch's
            ckv.compress(h, valid)
        idx_eval = ckv.eval().compress(h, valid)[0]
    assert len(torch.unique(raw)) <= 2
    assert len(torch.unique(idx[:, 0])) >= 30 and len(torch.unique(idx[:, 1])) >= 30
    assert (idx_eval == idx).float().mean() > 0.95  # inference routes with the running statistics


def test_padding_does_not_enter_the_routing_statistics():
    ckv = CollectiveKV(d_model=8, pool_size=16, user_dim=2).train()
    h = torch.randn(3, 5, 8)
    valid = torch.rand(3, 5) > 0.4
    garbage = torch.where(valid.unsqueeze(-1), h, torch.full_like(h, 1e4))
    with torch.no_grad():
        ckv.compress(garbage, valid)
    events = h[valid]
    torch.testing.assert_close(ckv.route_mean, 0.1 * events.mean(0))
    torch.testing.assert_close(ckv.route_var, 0.9 + 0.1 * events.var(0, unbiased=False))
    before = (ckv.route_mean.clone(), ckv.route_var.clone())
    with torch.no_grad():
        ckv.compress(garbage, torch.zeros(3, 5, dtype=torch.bool))  # no event: statistics kept
    assert torch.equal(ckv.route_mean, before[0]) and torch.equal(ckv.route_var, before[1])


def test_the_losses_peak_and_balance():
    """Peak: -mean log gate over valid positions; balance: KL(mean routing || uniform), 0 when uniform."""
    ckv = CollectiveKV(d_model=4, pool_size=4, user_dim=1)
    uniform = torch.zeros(1, 2, 3, 4)  # equal logits everywhere: mean routing is uniform
    gate = torch.full((1, 2, 3), 0.5)
    valid = torch.tensor([[True, True, False]])
    torch.testing.assert_close(ckv._losses(uniform, gate, valid), torch.tensor(np.log(2.0), dtype=torch.float32))
    peaked = torch.full((1, 2, 3, 4), -30.0)
    peaked[..., 0] = 30.0  # every position routed to row 0: KL = log 4
    torch.testing.assert_close(ckv._losses(peaked, torch.ones(1, 2, 3), valid),
                               torch.tensor(np.log(4.0), dtype=torch.float32), atol=1e-5, rtol=0)


def mean_gate(model, users) -> float:
    """The first layer's mean routing gate over valid positions (training mode computes it)."""
    with torch.no_grad():
        h, valid, _ = model.seq.user_inputs(users, model.user_tokenizer(users))
        h = model.seq.encoders[0](h, valid)
        gate = model.seq.decoders[0].ckv.compress(h, valid)[2]  # (B, 2, L)
    return float(gate[valid.unsqueeze(1).expand_as(gate)].mean())


def test_pool_usage_counts_the_valid_positions_per_layer_and_kind():
    """By hand: 2 users, 2 layers, 3 positions (user 1's first is padding), a pool of 4 rows."""
    from ugsep.collective_kv import pool_counts, pool_usage

    kv_index = torch.tensor([
        [[[0, 0, 1], [3, 3, 3]], [[2, 2, 2], [0, 1, 2]]],  # user 0: layer 0 K, V; layer 1 K, V
        [[[3, 0, 0], [1, 3, 3]], [[1, 2, 2], [0, 0, 0]]],  # user 1: position 0 is padding
    ])
    valid = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    counts = pool_counts(kv_index, valid, 4)
    assert counts.tolist() == [[[4, 1, 0, 0], [0, 0, 0, 5]], [[0, 0, 5, 0], [3, 1, 1, 0]]]
    usage = pool_usage(counts, top=1)
    assert usage["rows_used"] == [[0.5, 0.25], [0.25, 0.75]]
    assert usage["top1_share"] == [pytest.approx([0.8, 1.0]), pytest.approx([1.0, 0.6])]


def test_training_adds_the_losses_and_drives_the_gates_up():
    spec = synthetic_sequence_spec(L)
    cfg = ModelConfig(arch="hyformer", collective_kv=True, kv_pool_size=64, kv_user_dim=4, fm_dim=0)
    tcfg = TrainConfig(max_epochs=1, batch_size=128, warmup_steps=0, aux_loss_weight=1.0)
    torch.manual_seed(tcfg.seed)
    fresh = RankingModel(spec, cfg).train()  # train_model seeds the same way: the same initial weights
    model = train_model(spec, cfg, synthetic_sequence_dataset(120, seed=1, seq_len=L), tcfg).model.train().cpu()
    users, _, _ = batch([L, L, 5], [1, 1, 1])
    assert mean_gate(model, users) > mean_gate(fresh, users) + 0.05  # the peak loss pushed the gates towards 1
    assert model.auxiliary_loss() != 0.0 and model.auxiliary_loss() == 0.0  # read once, then reset


def test_config_keys_appear_only_with_collective_kv():
    plain = ModelConfig(arch="hyformer").to_dict()
    assert not {"collective_kv", "kv_pool_size", "kv_user_dim"} & plain.keys()  # older hyformer configs unchanged
    on = ModelConfig(arch="hyformer", collective_kv=True, kv_pool_size=100).to_dict()
    assert on["collective_kv"] is True and on["kv_pool_size"] == 100 and on["kv_user_dim"] == 4
    with pytest.raises(ValueError, match="collective_kv compresses hyformer"):
        ModelConfig(arch="ugsep", collective_kv=True)


@pytest.mark.parametrize("seq_len,expected", [(200, 102.4), (1000, 102.4)])
def test_stored_kv_is_about_100x_smaller_at_the_benchmark_width(seq_len, expected):
    """2 layers, D = 512, 4 user dims, pool 10,000: per layer and position 2 int16 indices + 2 x 4
    bf16 user dims = 20 bytes against 2 x 512 bf16 = 2,048 bytes of plain K/V."""
    layout = StateLayout(2, 8, 8, 512, True, True, 17, seq_len, 4, kv_user_dim=4, kv_pool_size=10_000)
    assert layout.index_dtype == torch.int16
    assert layout.kv_bytes_per_user() == 2 * seq_len * 20
    assert layout.uncompressed_kv_bytes_per_user() == 2 * seq_len * 2048
    assert layout.uncompressed_kv_bytes_per_user() / layout.kv_bytes_per_user() == pytest.approx(expected)


def test_quantized_model_keeps_split_equal_to_full():
    from ugsep.quant import QuantRecipe, quantize_model

    model = quantize_model(copy.deepcopy(ckv_model()), QuantRecipe("w8a16"))
    users, items, idx = batch([0, 3, L], [4, 30, 2])
    split, full = split_and_full(model, users, items, idx)
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-4)
