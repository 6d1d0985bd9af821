"""Quantizing HyFormer: what each sequence layer becomes, split == full after quantization, logits
close to float, FP8 calibration over every item-side layer, checkpoints; Triton where CUDA is."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ugsep.checkpoint import load_checkpoint, save_checkpoint
from ugsep.config import ModelConfig
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import synthetic_sequence_dataset, synthetic_sequence_spec
from ugsep.kernels import Backend
from ugsep.model import RankingModel
from ugsep.quant import QuantRecipe, calibrate_fp8, quantize_model
from ugsep.quant.apply import quantizable_layers, w8a16_linears
from ugsep.quant.int8 import dequantize_int8
from ugsep.quant.modules import QuantLinear, QuantPerTokenLinear
from ugsep.state import UserState

L = 20
ENCODERS = ["swiglu", "attention"]
MODES = ["w8a16", "fp8", "w8a16+fp8"]
# Quantized logits vs float: signal-to-quantization-noise ratio of the logits over the batch, as
# tests/test_quant.py measures it (at the config defaults, all-token pooling and an FM term: W8A16
# 42-43 dB, with FP8 28-37 dB). FP8 is looser: E4M3 keeps 3 mantissa bits and rounds the inputs of
# every item-side product too, not only the weights (~30 dB per product), and the candidate side
# chains five such products (the candidate queries' fc2, two layers' FFN fc1 and fc2). Around the logits' mean
# the ratio of a random model is lower (W8A16 22-32 dB): its logits vary little between candidates.
MIN_SQNR_DB = {"w8a16": 30.0, "fp8": 20.0, "w8a16+fp8": 20.0}


def hyformer(encoder: str, seed: int = 0, **cfg) -> RankingModel:
    """A random HyFormer whose logits spread well beyond the tolerances below."""
    torch.manual_seed(seed)
    model = RankingModel(synthetic_sequence_spec(L), ModelConfig(arch="hyformer", seq_encoder=encoder, **cfg))
    with torch.no_grad():
        model.head[-1].weight.mul_(120.0)  # 40 as make_model, x3: all-token pooling averages 16 tokens
        for dec in model.seq.decoders:
            dec.null_kv.normal_()  # a trained model's null slot is not zero
    return model.eval()


@pytest.fixture(scope="module")
def day():
    """400 candidates of ~50 users (users, items, user_index)."""
    data = synthetic_sequence_dataset(60, seed=1, seq_len=L)
    pick = np.sort(np.random.default_rng(0).choice(len(data), 400, replace=False))
    users, items, idx, _ = batch_tensors(data, pick)
    return users, items, idx


@pytest.fixture(scope="module", params=ENCODERS)
def float_model(request):
    return hyformer(request.param)


def split_and_full(model, users, items, idx):
    """(split, full) logits: the user state through its flat (stored) form, as serving reads it."""
    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        state = UserState.from_flat(model.encode_users(users).to_flat(), model.state_layout, dtype)
        return model.score_groups(state, items, idx), model(users, items, idx)


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    return 10 * torch.log10(ref.pow(2).sum() / (got - ref).pow(2).sum()).item()


@pytest.mark.parametrize("mode", MODES)
def test_every_layer_gets_its_format(float_model, mode):
    """W8A16 on every user-side sequence linear (and the decoders' shared q/out); the candidate
    queries' fc1 W8A16 on every position (QueryGenerator reads its weights), fc2 item side; the
    blocks' boundary is the user positions, user queries included."""
    model = quantize_model(copy.deepcopy(float_model), QuantRecipe(mode))
    cfg, seq = model.cfg, model.seq
    w8a16 = "w8a16" in mode
    item = "fp8" if "fp8" in mode else "float"
    assert cfg.n_user_positions > cfg.n_user_tokens  # the boundary the blocks once got wrong
    for blk in model.blocks:
        for fc in (blk.ffn.fc1, blk.ffn.fc2):
            assert (fc.boundary, fc.user_fmt, fc.item_fmt) == (cfg.n_user_positions, "w8a16" if w8a16 else "float",
                                                              item)
    linears = [m for m in seq.modules() if isinstance(m, nn.Linear | QuantLinear)]
    per_layer = {"swiglu": 2, "attention": 4}[cfg.seq_encoder] + 3  # encoder's, decoder's kv, q, out
    assert len(linears) == 1 + cfg.n_layers * per_layer  # the event projection, then each layer's
    assert all(isinstance(m, QuantLinear if w8a16 else nn.Linear) for m in linears)
    for gen in (seq.user_queries.fc1, seq.user_queries.fc2, seq.group_queries.fc1):
        assert gen.boundary == gen.n_tokens and gen.user_fmt == ("w8a16" if w8a16 else "float")
    fc2 = seq.group_queries.fc2
    assert (fc2.boundary, fc2.item_fmt) == (0, item)
    assert not any(isinstance(m, QuantLinear | QuantPerTokenLinear) for m in model.item_tokenizer.modules())
    assert isinstance(model.head[0], nn.Linear) and isinstance(model.blocks[0].comp.down, nn.Linear)


@pytest.mark.parametrize("mode", MODES)
def test_split_equals_full_and_logits_stay_close_to_float(float_model, day, mode):
    users, items, idx = day
    with torch.no_grad():
        ref = float_model(users, items, idx)
    model = quantize_model(copy.deepcopy(float_model), QuantRecipe(mode))
    split, full = split_and_full(model, users, items, idx)
    torch.testing.assert_close(split, full, rtol=0, atol=1e-5)  # the same quantized layers on both paths
    assert ref.std() > 0.5  # logits spread well beyond the bounds
    assert sqnr_db(ref, full) > MIN_SQNR_DB[mode]


def test_calibration_measures_every_item_side_layer(float_model, day):
    """Bound 0: every layer with item positions is sensitive, the candidate queries' fc2 too
    (the hooks see every caller, not only the blocks); no bound: none; the kernels come back."""
    users, items, idx = day
    item_side = [f"blocks.{i}.ffn.fc{j}" for i in range(float_model.cfg.n_layers) for j in (1, 2)]
    item_side.append("seq.group_queries.fc2")
    assert calibrate_fp8(float_model, QuantRecipe(fp8_max_rel_error=0.0), users, items, idx) == item_side
    assert calibrate_fp8(float_model, QuantRecipe(fp8_max_rel_error=1e9), users, items, idx) == []
    assert float_model.backend is Backend.AUTO
    recipe = QuantRecipe(float_layers=["seq.group_queries.fc2", "blocks.1.ffn.fc2"])
    model = quantize_model(copy.deepcopy(float_model), recipe)
    assert model.seq.group_queries.fc2.item_fmt == model.blocks[1].ffn.fc2.item_fmt == "float"
    assert model.blocks[0].ffn.fc2.item_fmt == "fp8"
    split, full = split_and_full(model, users, items, idx)
    torch.testing.assert_close(split, full, rtol=0, atol=1e-5)


def test_blocks_boundary_counts_the_user_queries(float_model):
    layers = quantizable_layers(float_model)
    assert layers["blocks.0.ffn.fc1"][1] == float_model.cfg.n_user_positions
    assert layers["seq.group_queries.fc2"][1] == 0
    assert set(w8a16_linears(float_model)) >= {"seq.embed.proj", "seq.decoders.1.q", "seq.decoders.1.out"}


def test_query_generator_reads_the_dequantized_weights(float_model):
    """QueryGenerator.user_part/finish read fc1.weight: after quantization they read the int8
    weights dequantized, and an FP8 layer refuses to hand out weights its products would skip."""
    model = quantize_model(copy.deepcopy(float_model), QuantRecipe("w8a16+fp8"))
    fc1 = model.seq.group_queries.fc1
    exact = dequantize_int8(fc1.user_q.transpose(1, 2), fc1._scale("user"))
    assert torch.equal(fc1.weight, exact) and fc1.weight.shape == float_model.seq.group_queries.fc1.weight.shape
    gi = torch.randn(3, fc1.weight.shape[1])
    gen = model.seq.group_queries
    with torch.no_grad():
        got = gen.finish(gen.user_part(gi[:, : gen.n_user_in]), gi[:, gen.n_user_in :])
        want = gen.fc2(torch.nn.functional.gelu(torch.einsum("bk,nkh->bnh", gi, exact) + fc1.bias))
    torch.testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="item positions are FP8 has no weight tensor"):
        _ = gen.fc2.weight


def test_quantized_hyformer_checkpoint_round_trip(float_model, day, tmp_path):
    users, items, idx = day
    recipe = QuantRecipe("w8a16+fp8", float_layers=["seq.group_queries.fc2"])
    model = quantize_model(copy.deepcopy(float_model), recipe)
    version = save_checkpoint(model, tmp_path, quant={"recipe": recipe.to_dict(), "base_model_version": "x"})
    loaded, loaded_version = load_checkpoint(tmp_path)
    assert loaded_version == version and version.startswith("x+w8a16+fp8-")
    assert isinstance(loaded.seq.decoders[0].q, QuantLinear) and loaded.seq.group_queries.fc2.item_fmt == "float"
    with torch.no_grad():
        want = model.score(users, items, idx)
        got = loaded.score(users, items, idx)
        assert torch.equal(got, want)
        assert torch.equal(loaded(users, items, idx), model(users, items, idx))


def test_bf16_cpu_model_stays_close_to_float32(day):
    """A quantized model cast to bf16 on the CPU (scales stay exact float32, every product in
    bf16) scores close to its float32 self, split and full alike."""
    users, items, idx = day
    model = quantize_model(hyformer("attention"), QuantRecipe("w8a16"))
    with torch.no_grad():
        ref = model.score(users, items, idx)
    split, full = split_and_full(copy.deepcopy(model).to(torch.bfloat16), users, items, idx)
    for got in (split, full):
        assert sqnr_db(ref, got.float()) > 20


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton W8A16 kernel needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("k,n", [(24, 64), (64, 512), (256, 64), (64, 192)])  # HyFormer's sequence layers
@pytest.mark.parametrize("rows", [(1,), (3, 4), (50, 20)])
@pytest.mark.parametrize("group_size", [0, 8])
def test_triton_quant_linear_matches_torch(k, n, rows, group_size):
    torch.manual_seed(0)
    lin = QuantLinear(nn.Linear(k, n), group_size).cuda().to(torch.bfloat16)
    x = torch.randn(*rows, k, device="cuda", dtype=torch.bfloat16)
    w = dequantize_int8(lin.q.transpose(1, 2), lin.scale.view(torch.float32))[0]  # (K, N) float32
    ref = x.float() @ w + lin.bias.float()
    tol = dict(rtol=0.02, atol=0.05 * ref.abs().max().item() / 10)
    torch.testing.assert_close(lin.use_kernels(Backend.TRITON)(x).float(), ref, **tol)
    torch.testing.assert_close(lin.use_kernels(Backend.TORCH)(x).float(), ref, **tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("encoder", ENCODERS)
def test_triton_hyformer_matches_torch(encoder, day, monkeypatch):
    """The whole quantized model in bf16 on CUDA: the Triton W8A16 kernels are as close to the
    float32 logits as the torch ops, and they do run for the sequence layers."""
    users, items, idx = ({k: v.cuda() for k, v in day[0].items()}, {k: v.cuda() for k, v in day[1].items()},
                         day[2].cuda())
    model = quantize_model(hyformer(encoder), QuantRecipe("w8a16+fp8")).cuda()
    with torch.no_grad():
        ref = model.use_kernels(Backend.TORCH).score(users, items, idx)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    from ugsep.quant import modules

    shapes, original = [], modules.triton_kernel

    def spy(name):
        kernel = original(name)

        def run(x, *args):
            shapes.append(tuple(x.shape))
            return kernel(x, *args)

        return run if name == "w8a16_bmm" else kernel

    with torch.no_grad():
        eager = bf16.use_kernels(Backend.TORCH).score(users, items, idx).float()
        monkeypatch.setattr(modules, "triton_kernel", spy)
        triton = bf16.use_kernels(Backend.TRITON).score(users, items, idx).float()
    assert (1, len(day[0]["user_id"]) * L, model.seq.embed.proj.in_features) in shapes  # the event projection
    err_eager, err_triton = (eager - ref).abs(), (triton - ref).abs()
    assert err_triton.mean() <= 1.5 * err_eager.mean() + 1e-3 and err_triton.max() <= 2 * err_eager.max() + 1e-2
