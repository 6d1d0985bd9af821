"""HyFormer on the UG-Sep split: the split path equals the full forward, the user side never reads
a candidate, empty sequences score finitely, and the sequence shares the item-id table."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ugsep.config import ModelConfig
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import synthetic_sequence_dataset, synthetic_sequence_spec
from ugsep.features import PAD_ID
from ugsep.model import RankingModel
from ugsep.state import UserState

L = 12


def hyformer(seed: int = 0, **cfg) -> RankingModel:
    torch.manual_seed(seed)
    model = RankingModel(synthetic_sequence_spec(L), ModelConfig(arch="hyformer", **cfg))
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)  # logits spread well beyond the tolerance
        for dec in model.seq.decoders:
            dec.null_kv.normal_()  # a trained model's null slot is not zero
    return model.eval()


def batch(lengths: list[int], cands: list[int], seed: int = 0):
    """users with the given history lengths and candidate counts: (users, items, user_index)."""
    data = synthetic_sequence_dataset(60, seed=seed, seq_len=L)
    users, items, _, _ = batch_tensors(data, np.arange(len(data)))
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(rng.choice(len(users["user_id"]), len(lengths), replace=False))
    users = {k: v[rows].clone() for k, v in users.items()}
    for i, n in enumerate(lengths):  # right-aligned: the last n slots hold events
        for name in ("hist_item_id", "hist_category"):
            users[name][i, : L - n] = PAD_ID
            users[name][i, L - n :] = torch.from_numpy(rng.integers(0, 500, n))
    idx = torch.repeat_interleave(torch.arange(len(cands)), torch.tensor(cands))
    pick = torch.from_numpy(rng.integers(0, len(data), len(idx)))
    return users, {k: v[pick] for k, v in items.items()}, idx


def split_and_full(model, users, items, idx):
    with torch.no_grad():
        state = UserState.from_flat(model.encode_users(users).to_flat(), model.state_layout)
        return model.score_groups(state, items, idx), model(users, items, idx)


@pytest.mark.parametrize("encoder", ["swiglu", "attention"])
def test_split_equals_full_for_empty_single_and_full_histories(encoder):
    """Users with 0, 1 and L events, with 1 and 1,000 candidates."""
    model = hyformer(seq_encoder=encoder, pool="all", fm_dim=8)
    users, items, idx = batch([0, 1, L, 0, L, 1], [1, 1000, 1, 1000, 1000, 3])
    split, full = split_and_full(model, users, items, idx)
    assert torch.isfinite(full).all() and full.std() > 0.5
    torch.testing.assert_close(split, full, rtol=1e-6, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), encoder=st.sampled_from(["swiglu", "attention"]),
       queries=st.sampled_from([(1, 1), (2, 2), (4, 4), (1, 3)]), layers=st.integers(1, 3),
       pool=st.sampled_from(["group", "all"]), heads=st.sampled_from([1, 2, 4]))
def test_split_equals_full_random_models(seed, encoder, queries, layers, pool, heads):
    nu, ng = queries
    tokens = 2 + 2 + nu + ng
    model = hyformer(seed, seq_encoder=encoder, n_user_tokens=2, n_group_tokens=2, n_user_queries=nu,
                     n_group_queries=ng, n_layers=layers, pool=pool, n_heads=heads, d_model=4 * tokens)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, L + 1, 5).tolist()
    users, items, idx = batch(lengths, rng.integers(1, 40, 5).tolist(), seed % 7)
    split, full = split_and_full(model, users, items, idx)
    torch.testing.assert_close(split, full, rtol=1e-6, atol=1e-5)


def test_the_user_side_never_reads_the_candidate():
    """The user state is the same whatever the candidates; the candidates' scores do depend on the
    sequence (through the candidate queries' decoding) and on the candidate."""
    model = hyformer(pool="all")
    users, items, idx = batch([L, 3, 0], [5, 5, 5])
    with torch.no_grad():
        state = model.encode_users(users).to_flat()
        assert torch.equal(state, model.encode_users(users).to_flat())
        base = model(users, items, idx)
        shuffled = {k: v[torch.randperm(len(idx))] for k, v in items.items()}
        assert not torch.allclose(model(users, shuffled, idx), base)
        other = dict(users, hist_item_id=users["hist_item_id"].flip(0), hist_category=users["hist_category"].flip(0))
        assert not torch.allclose(model(other, items, idx), base)  # the sequence reaches the score


def test_the_sequence_shares_the_item_id_table_and_trains_it():
    model = hyformer()
    table = model.item_tokenizer.embed.tables["item_id"]
    assert model.seq.embed.shared["item_id"] is table
    names = [n for n, p in model.named_parameters() if p is table.weight]
    assert names == ["item_tokenizer.embed.tables.item_id.weight"]  # registered once: one checkpoint key
    users, items, idx = batch([L, L], [4, 4])
    items = dict(items, item_id=torch.full_like(items["item_id"], 10**6))  # no candidate uses the sequence's ids
    model.train()
    model.score(users, items, idx).sum().backward()
    hist_rows = torch.remainder(users["hist_item_id"][users["hist_item_id"] != PAD_ID], table.num_embeddings)
    assert table.weight.grad[hist_rows].abs().sum() > 0  # gradient reached the table through the sequence


def test_the_state_layout_sizes_every_part():
    model = hyformer(pool="all", fm_dim=4)
    users, _, _ = batch([2, L], [1, 1])
    with torch.no_grad():
        state = model.encode_users(users)
    layout = model.state_layout
    assert set(layout.parts) == {"heads", "comp", "pooled", "fm", "kv", "valid", "pre"}
    for name, shape in layout.parts.items():
        assert tuple(getattr(state, name).shape[1:]) == shape, name
    assert state.to_flat().shape == (2, layout.width)
    assert layout.parts["kv"] == (2, 2, L, 64)
    assert layout.bytes_per_user() == 4 * layout.width and layout.bytes_per_user(torch.bfloat16) == 2 * layout.width


def test_hyformer_needs_sequence_fields():
    from ugsep.data.synthetic import synthetic_spec

    with pytest.raises(ValueError, match="no sequence_fields"):
        RankingModel(synthetic_spec(), ModelConfig(arch="hyformer"))
    with pytest.raises(ValueError, match="counts the query tokens"):
        ModelConfig(arch="hyformer", n_user_queries=2)  # T = 14 does not divide 64


@pytest.mark.parametrize("arch", ["ugsep", "rankmixer"])
def test_the_token_mixers_ignore_sequence_fields(arch):
    torch.manual_seed(0)
    model = RankingModel(synthetic_sequence_spec(L), ModelConfig(arch=arch)).eval()
    users, items, idx = batch([L, 3, 0], [5, 5, 5])
    other = dict(users, hist_item_id=users["hist_item_id"].flip(0), hist_category=users["hist_category"].flip(0))
    with torch.no_grad():
        assert torch.equal(model(users, items, idx), model(other, items, idx))
    assert not any("seq" in name for name, _ in model.named_parameters())


def test_flops_count_the_sequence_once_per_user_and_survive_quantization():
    from ugsep.quant import QuantRecipe, quantize_model

    model = hyformer()
    at_1, at_100 = model.flops_per_candidate(1.0), model.flops_per_candidate(100.0)
    user, item = model.seq.flops(L)
    assert at_1 > at_100 > item and user > 10 * item / L  # the sequence side is user-side work
    quantize_model(model, QuantRecipe("w8a16"))
    assert model.flops_per_candidate(1.0) == at_1 and model.flops_per_candidate(100.0) == at_100
