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
        dtype = next(model.parameters()).dtype
        state = UserState.from_flat(model.encode_users(users).to_flat(), model.state_layout, dtype)
        return model.score_groups(state, items, idx), model(users, items, idx)


@pytest.mark.parametrize("collective", [False, True], ids=["kv", "collective_kv"])
@pytest.mark.parametrize("encoder", ["swiglu", "attention"])
def test_split_equals_full_for_empty_single_and_full_histories(encoder, collective):
    """Users with 0, 1 and L events, with 1 and 1,000 candidates; with CollectiveKV the state
    keeps pool indices and user dims (through its flat form)."""
    ckv = dict(collective_kv=True, kv_pool_size=1000) if collective else {}
    model = hyformer(seq_encoder=encoder, pool="all", fm_dim=8, **ckv)
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


@pytest.mark.parametrize("by_position", [True, False], ids=["rows_by_position", "rows_by_candidate"])
def test_decode_plan_points_every_query_row_at_its_users_events(by_position):
    """The varlen plan (pure torch, so checked here on the CPU): in either row order, the sequence
    holding query p of candidate n starts at its user's first event in the (B_u * S) key rows and
    uses exactly that user's events, and the sequences cover every query row once, in order."""
    from ugsep.varlen_decode import decode_plan

    lens = torch.tensor([0, 1, 5, L, L, 3, 0])
    valid = (torch.arange(L) >= L - lens[:, None]).float()
    counts = torch.tensor([3, 40, 1, 0, 7, 2, 5])
    idx = torch.repeat_interleave(torch.arange(len(lens)), counts)
    n, nq = len(idx), 4
    plan = decode_plan(idx, valid, nq, by_position)
    assert plan.by_position == by_position and plan.cu_q[0] == 0 and plan.cu_q[-1] == n * nq
    assert (plan.cu_q[1:] >= plan.cu_q[:-1]).all()
    for c in range(n):
        u = int(idx[c])
        for p in range(nq):
            row = p * n + c if by_position else c * nq + p
            b = int(torch.searchsorted(plan.cu_q, torch.tensor(row, dtype=plan.cu_q.dtype), right=True)) - 1
            assert plan.cu_k[b] == u * L + L - lens[u] and plan.used_k[b] == lens[u], (c, p, b)
    with pytest.raises(ValueError, match="right-aligned"):
        decode_plan(idx, valid.flip(1), nq, by_position)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen flash decoding runs on CUDA only")


@pytest.mark.parametrize("events", [0, 5, L], ids=["no_events", "some_events", "max_len_events"])
def test_one_users_candidates_decode_as_each_candidate_alone(events):
    """An online request (one user): grouped_attention lays the candidates' queries out as the
    user's query sequence; each candidate's result equals its own attention over its user's
    [null, events] (the full forward's per-row path)."""
    from ugsep.sequence import attention, grouped_attention, user_buckets

    torch.manual_seed(events)
    dec = hyformer().seq.decoders[0].eval()
    valid = (torch.arange(L) >= L - events).float()[None]  # (1, L) right-aligned
    kv = dec.keys_values(torch.randn(1, L, 64), valid > 0.5)  # (1, 2, L, D)
    k, v, mask = dec._with_null(kv, valid > 0.5)
    q = torch.randn(37, 4, 64)
    with torch.no_grad():
        got = grouped_attention(q, k, v, mask, user_buckets(torch.zeros(37, dtype=torch.long)), dec.n_heads)
        ref = attention(q, k.expand(37, -1, -1), v.expand(37, -1, -1), mask[:, None, None, :], dec.n_heads)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_decode_plan_read_back_asynchronously_equals_the_waited_for_one():
    """plan_stats queues the host read (pinned, non-blocking) and decode_plan waits for it later:
    the same plan as when it is read and waited for at once, with GPU work queued in between."""
    from ugsep.varlen_decode import decode_plan, plan_stats

    lens = torch.tensor([0, 1, 5, L, L, 3, 0], device="cuda")
    valid = (torch.arange(L, device="cuda") >= L - lens[:, None]).float()
    idx = torch.repeat_interleave(torch.arange(len(lens), device="cuda"),
                                  torch.tensor([3, 40, 1, 0, 7, 2, 5], device="cuda"))
    stats = plan_stats(idx, valid, 4)
    assert stats.host.is_pinned()
    torch.randn(2048, 2048, device="cuda").matmul(torch.randn(2048, 2048, device="cuda"))  # queued in between
    late, now = decode_plan(idx, valid, 4, stats=stats), decode_plan(idx, valid, 4)
    assert (late.by_position, late.max_q, late.max_k) == (now.by_position, now.max_q, now.max_k)
    for name in ("cu_q", "cu_k", "used_k", "lens"):
        assert torch.equal(getattr(late, name), getattr(now, name)), name


@needs_cuda
def test_varlen_decode_equals_the_padded_attention():
    """The flash varlen kernel with the null slot merged afterwards equals the padded, masked SDPA
    path over [null, events], for users with 0, 1, some and L events and 0..40 candidates."""
    from ugsep.sequence import grouped_attention, user_buckets
    from ugsep.varlen_decode import decode_plan, varlen_decode

    torch.manual_seed(0)
    dec = hyformer().seq.decoders[0].cuda().to(torch.bfloat16)
    lens = torch.tensor([0, 1, 5, L, L, 3, 0], device="cuda")
    valid = (torch.arange(L, device="cuda") >= L - lens[:, None]).to(torch.bfloat16)
    h = torch.randn(len(lens), L, 64, device="cuda", dtype=torch.bfloat16)
    kv = dec.keys_values(h, valid > 0.5)  # (B_u, 2, L, D)
    kv = kv.transpose(0, 1).contiguous().transpose(0, 1)  # K and V as (B_u, L, D) slabs, as the state keeps them
    counts = torch.tensor([3, 40, 1, 0, 7, 2, 5], device="cuda")
    idx = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), counts)
    q = torch.randn(len(idx), 4, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        k, v, mask = dec._with_null(kv, valid > 0.5)
        ref = grouped_attention(q, k, v, mask, user_buckets(idx), dec.n_heads)
        got = varlen_decode(q, kv[:, 0], kv[:, 1], dec.null_kv, decode_plan(idx, valid, 4), dec.n_heads)
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2)


@needs_cuda
@pytest.mark.parametrize("encoder,collective", [("swiglu", False), ("attention", False), ("swiglu", True)])
def test_fused_bf16_item_side_is_as_close_to_float32_as_eager_bf16(encoder, collective):
    """The fused item side (Triton mixing, varlen flash decoding) against the eager one, both in bf16,
    each measured against the float32 model; candidates in shuffled user order; with CollectiveKV
    the K/V are rebuilt from the compressed state."""
    import copy

    from ugsep.kernels import Backend

    ckv = dict(collective_kv=True, kv_pool_size=500) if collective else {}
    model = hyformer(seq_encoder=encoder, pool="all", fm_dim=8, **ckv).cuda()
    users, items, idx = batch([0, 1, L, 0, L, 1, 5], [1, 300, 1, 40, 200, 3, 0])
    perm = torch.randperm(len(idx))
    users = {k: v.cuda() for k, v in users.items()}
    items, idx = {k: v[perm].cuda() for k, v in items.items()}, idx[perm].cuda()
    with torch.inference_mode():
        ref = model.use_kernels(Backend.TORCH).score_groups(model.encode_users(users), items, idx).float()
        half = copy.deepcopy(model).to(torch.bfloat16)
        state = half.encode_users(users)
        eager = half.use_kernels(Backend.TORCH).score_groups(state, items, idx).float()
        fused = half.use_kernels(Backend.TRITON).score_groups(state, items, idx).float()
        flat = UserState.from_flat(state.to_flat(), half.state_layout).to("cuda", torch.bfloat16)  # from storage
        stored = half.score_groups(flat, items, idx).float()
    assert ref.std() > 0.5
    err_eager, err_fused = (eager - ref).abs(), (fused - ref).abs()
    assert err_fused.mean() <= 1.5 * err_eager.mean() and err_fused.max() <= 2 * err_eager.max() + 1e-2
    torch.testing.assert_close(stored, fused)
