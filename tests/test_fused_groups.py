"""The fused item side of score_groups (position-major layout, Triton kernels) against the eager
path it replaces; its building blocks (position-major products, pre-quantized FP8 input) on CPU;
the kernel choice (``use_kernels``) made once and kept across moves."""

import copy

import numpy as np
import pytest
import torch
from conftest import make_model

from ugsep.checkpoint import load_checkpoint, save_checkpoint
from ugsep.config import ModelConfig
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import synthetic_dataset, synthetic_sequence_dataset, synthetic_sequence_spec
from ugsep.kernels import Backend
from ugsep.layers import PerTokenLinear
from ugsep.model import RankingModel
from ugsep.quant import QuantRecipe, quantize_model
from ugsep.quant.fp8 import fp8_bmm, quantize_fp8_rows, quantize_fp8_weight
from ugsep.quant.modules import QuantPerTokenLinear

CUDA = torch.cuda.is_available()
FP8_GPU = CUDA and torch.cuda.get_device_capability() >= (8, 9)
needs_cuda = pytest.mark.skipif(not CUDA, reason="the fused kernels run on CUDA GPUs only")

CONFIGS = {  # D not a power of two; T_u != T_g; compensation on and off; both pooling modes
    "default": dict(),
    "d96_u2_g6_comp_all": dict(d_model=96, n_user_tokens=2, n_group_tokens=6, pool="all", comp_rank=16),
    "d96_nocomp": dict(d_model=96, compensation=False),
    "mixer_only": dict(fm_dim=0, pool="group"),  # no FM term, group pooling (the default has both)
}


def test_positions_first_is_forward_without_the_transposes():
    lin = PerTokenLinear(6, 32, 48)
    x = torch.randn(5, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(lin.positions_first(x[:, 2:].transpose(0, 1).contiguous(), slice(2, 6)),
                                   lin(x[:, 2:], slice(2, 6)).transpose(0, 1))
        q = QuantPerTokenLinear(lin, boundary=3, user_fmt="w8a16", item_fmt="fp8")
        torch.testing.assert_close(q.positions_first(x.transpose(0, 1).contiguous()), q(x).transpose(0, 1))


def test_prequantized_fp8_input_gives_the_same_product():
    w = torch.randn(3, 64, 40) / 8
    wq, ws = quantize_fp8_weight(w)
    qt = wq.transpose(1, 2).contiguous()
    x = torch.randn(3, 20, 64).to(torch.bfloat16)
    b = torch.randn(3, 40)
    torch.testing.assert_close(fp8_bmm(None, qt, ws, b, quantize_fp8_rows(x)), fp8_bmm(x, qt, ws, b))
    lin = QuantPerTokenLinear(PerTokenLinear(6, 64, 40), boundary=3, user_fmt="w8a16", item_fmt="fp8")
    with pytest.raises(ValueError, match="pre-quantized"):
        lin.positions_first(x, slice(0, 3), quantize_fp8_rows(x))


def test_triton_is_refused_where_it_cannot_run():
    model = quantize_model(make_model(), QuantRecipe("w8a16"))  # on the CPU
    assert model.kernels is Backend.TORCH
    with pytest.raises(RuntimeError, match="Backend.TRITON needs the model on a CUDA device"):
        model.use_kernels(Backend.TRITON)
    assert model.backend is Backend.AUTO and model.kernels is Backend.TORCH  # unchanged
    with pytest.raises(RuntimeError, match="Backend.TRITON needs"):
        QuantPerTokenLinear(PerTokenLinear(4, 32, 16), 2, "w8a16", "float", backend=Backend.TRITON)


def test_one_choice_reaches_every_quantized_layer_and_moves_re_resolve_auto(monkeypatch):
    model = quantize_model(make_model(), QuantRecipe("w8a16"), backend=Backend.TORCH)
    layers = [m for m in model.modules() if isinstance(m, QuantPerTokenLinear)]
    assert layers and all(m.backend is Backend.TORCH for m in layers)
    model.use_kernels(Backend.AUTO)
    assert all(m.backend is Backend.AUTO for m in layers)
    seen = []

    def resolve(backend, device):
        seen.append(Backend(backend))
        return Backend.TORCH

    monkeypatch.setattr("ugsep.model.resolve_backend", resolve)
    monkeypatch.setattr("ugsep.quant.modules.resolve_backend", resolve)
    model.to(torch.float64)  # a move or cast resolves AUTO again, in the model and in each layer
    assert seen == [Backend.AUTO] * (len(layers) + 1)


def _day(n_users, device):
    data = synthetic_dataset(n_users, seed=4)
    users, items, idx, _ = batch_tensors(data, np.arange(len(data)))
    return ({k: v.to(device) for k, v in users.items()}, {k: v.to(device) for k, v in items.items()}, idx.to(device))


def _both_paths(model, users, items, idx):
    """(eager, fused) logits: the item side with torch ops, then with the Triton kernels."""
    with torch.inference_mode():
        state = model.encode_users(users)
        eager = model.use_kernels(Backend.TORCH).score_groups(state, items, idx).float()
        fused = model.use_kernels(Backend.TRITON).score_groups(state, items, idx).float()
    model.use_kernels(Backend.AUTO)
    return eager, fused


@needs_cuda
def test_auto_picks_triton_once_a_loaded_model_moves_to_cuda(tmp_path):
    recipe = QuantRecipe("w8a16")
    save_checkpoint(quantize_model(make_model(), recipe), tmp_path,
                    quant={"recipe": recipe.to_dict(), "base_model_version": "ugsep-base"})
    model, _ = load_checkpoint(tmp_path)  # on the CPU, as the score workers load it
    assert model.kernels is Backend.TORCH
    model = model.to("cuda", torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, QuantPerTokenLinear)]
    assert model.kernels is Backend.TRITON and all(m.kernels is Backend.TRITON for m in layers)
    assert model.cpu().kernels is Backend.TORCH


@needs_cuda
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_fused_matches_eager_in_float32(cfg):
    users, items, idx = _day(60, "cuda")
    eager, fused = _both_paths(make_model(seed=2, **cfg).cuda(), users, items, idx)
    assert eager.std() > 0.5  # logits spread well beyond the tolerance
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-3)


@needs_cuda
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_fused_bf16_is_as_close_to_float32_as_eager_bf16(cfg):
    users, items, idx = _day(60, "cuda")
    model = make_model(seed=2, **cfg).cuda()
    ref, _ = _both_paths(model, users, items, idx)
    eager, fused = _both_paths(copy.deepcopy(model).to(torch.bfloat16), users, items, idx)
    err_eager, err_fused = (eager - ref).abs(), (fused - ref).abs()
    assert err_fused.mean() <= 1.5 * err_eager.mean() and err_fused.max() <= 2 * err_eager.max() + 1e-2


@pytest.mark.skipif(not FP8_GPU, reason="the FP8 item side needs a CUDA GPU with FP8 (Ada/Hopper or newer)")
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_fused_quantized_matches_eager_quantized(cfg):
    users, items, idx = _day(60, "cuda")
    model = make_model(seed=2, **cfg)
    ref, _ = _both_paths(copy.deepcopy(model).cuda(), users, items, idx)
    quant = quantize_model(model, QuantRecipe("w8a16+fp8")).cuda().to(torch.bfloat16)
    eager, fused = _both_paths(quant, users, items, idx)
    err_eager, err_fused = (eager - ref).abs(), (fused - ref).abs()
    # the two differ by about the FP8 error itself (rounding flips on slightly different inputs),
    # so what must hold is that the fused path is no further from the float model
    assert err_fused.mean() <= 1.5 * err_eager.mean() and err_fused.max() <= 2 * err_eager.max() + 1e-2


@needs_cuda
@pytest.mark.parametrize("by_position", [True, False], ids=["rows_by_position", "rows_by_candidate"])
@pytest.mark.parametrize("pool", ["group", "all"])
def test_fused_hyformer_is_as_close_to_float32_in_either_decoding_order(by_position, pool):
    """The fused hyformer item side (tokens and queries written position-major, varlen flash decoding with
    its query rows in either order, the last layer pooled in the norm kernel) against the eager one, both
    in bf16, each measured against the float32 model."""
    from ugsep.fused_groups import score_groups_fused

    torch.manual_seed(0)
    model = RankingModel(synthetic_sequence_spec(12), ModelConfig(arch="hyformer", pool=pool, fm_dim=8)).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)  # logits spread well beyond the tolerance
        for dec in model.seq.decoders:
            dec.null_kv.normal_()  # a trained model's null slot is not zero
    data = synthetic_sequence_dataset(40, seed=3, seq_len=12)
    users, items, idx, _ = batch_tensors(data, np.random.default_rng(0).permutation(len(data)), "cuda")
    model = model.cuda()
    with torch.inference_mode():
        ref = model.use_kernels(Backend.TORCH).score_groups(model.encode_users(users), items, idx).float()
        half = copy.deepcopy(model).to(torch.bfloat16)
        state = half.encode_users(users)
        eager = half.score_groups(state, items, idx).float()
        fused = score_groups_fused(half, state, items, idx, by_position=by_position).float()
    assert ref.std() > 0.5
    err_eager, err_fused = (eager - ref).abs(), (fused - ref).abs()
    assert err_fused.mean() <= 1.5 * err_eager.mean() and err_fused.max() <= 2 * err_eager.max() + 1e-2


@needs_cuda
def test_fused_with_no_candidates_returns_no_scores():
    users, items, idx = _day(3, "cuda")
    model = make_model().cuda().use_kernels(Backend.TRITON)
    with torch.inference_mode():
        out = model.score_groups(model.encode_users(users), {k: v[:0] for k, v in items.items()}, idx[:0])
    assert out.shape == (0,)


@needs_cuda
@pytest.mark.parametrize("k", [96, 3072])
def test_gelu_fp8_rows_match_torch(k):
    from ugsep.quant.triton_kernels import fp8_quantize_rows

    torch.manual_seed(0)
    x = torch.randn(2, 50, k, device="cuda", dtype=torch.bfloat16) * 3
    q, s = fp8_quantize_rows(x, gelu=True)
    q_ref, s_ref = quantize_fp8_rows(torch.nn.functional.gelu(x))
    torch.testing.assert_close(s, s_ref, rtol=1e-2, atol=0)
    assert (q.float() * s - q_ref.float() * s_ref).abs().max() <= 0.07 * (q_ref.float() * s_ref).abs().max()
