"""Quantization: error bounds, quality vs float, CPU paths, checkpoints; Triton where CUDA is."""

import copy

import numpy as np
import pytest
import torch
from conftest import make_model

from cli.model_commands import quantize_checkpoint
from ugsep.checkpoint import load_checkpoint, save_checkpoint
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import synthetic_dataset
from ugsep.layers import PerTokenLinear
from ugsep.metrics import auc
from ugsep.quant import Backend, QuantRecipe, quantize_model
from ugsep.quant.fp8 import quantize_fp8_rows, quantize_fp8_weight
from ugsep.quant.int8 import dequantize_int8, quantize_int8
from ugsep.quant.modules import QuantLinear, QuantPerTokenLinear


@pytest.mark.parametrize("group_size", [0, 16])
def test_int8_roundtrip_error_is_half_a_step(group_size):
    w = torch.randn(3, 64, 40)
    q, s = quantize_int8(w, group_size)
    assert q.dtype == torch.int8 and s.shape == (3, 64 // (group_size or 64), 40)
    err = (dequantize_int8(q, s) - w).abs()
    step = s.repeat_interleave(group_size or 64, dim=1)
    assert (err <= step / 2 + 1e-6).all()


def test_fp8_roundtrip_relative_error():
    w = torch.randn(2, 64, 32)
    q, s = quantize_fp8_weight(w)
    rel = ((q.float() * s.unsqueeze(1)) - w).abs() / w.abs().clamp(min=1e-3)
    assert rel.median() < 0.04  # E4M3 has 3 mantissa bits: <= 1/16 relative, ~1/32 typical
    x = torch.randn(5, 64) * torch.logspace(-2, 2, 5)[:, None]  # rows of very different scales
    xq, xs = quantize_fp8_rows(x)
    assert ((xq.float() * xs - x).abs() / x.abs().amax(1, keepdim=True)).max() < 0.07


def _scores(model, data):
    users, items, idx, _ = batch_tensors(data, np.arange(len(data)))
    with torch.no_grad():
        return model.score(users, items, idx).numpy(), model(users, items, idx).numpy()


@pytest.mark.parametrize("mode,max_auc_drop", [("w8a16", 0.001), ("w8a16+fp8", 0.005)])
def test_quantized_scores_stay_close_to_float(tmp_path, mode, max_auc_drop):
    float_model = make_model(seed=1)
    save_checkpoint(float_model, tmp_path / "f")
    info = quantize_checkpoint(str(tmp_path / "f"), str(tmp_path / "q"), mode, calib_rows=512)
    qmodel, version = load_checkpoint(tmp_path / "q")
    assert version == info["model_version"] and version.startswith(info["base_model_version"] + "+" + mode)
    data = synthetic_dataset(300, seed=9)
    ref, _ = _scores(float_model, data)
    split, full = _scores(qmodel, data)
    np.testing.assert_allclose(split, full, rtol=0, atol=1e-5)  # split == full holds after quantization
    labels = np.random.default_rng(0).random(len(ref)) < 1 / (1 + np.exp(-ref))  # labels the float model explains
    drop = auc(labels, ref) - auc(labels, split)
    assert abs(drop) <= max_auc_drop
    assert np.abs(split - ref).max() < (0.15 if mode == "w8a16" else 1.5) * ref.std()


def test_cpu_bf16_int8pack_path_matches_dequantized():
    lin = PerTokenLinear(4, 64, 48)
    mod = QuantPerTokenLinear(lin, boundary=4, user_fmt="w8a16", item_fmt="float", backend=Backend.TORCH)
    x = torch.randn(10, 4, 64)
    with torch.no_grad():
        ref = mod(x)  # float32: dequantize + bmm
        fast = mod(x.bfloat16())  # bf16 on CPU: torch._weight_int8pack_mm per position
    torch.testing.assert_close(fast.float(), ref, rtol=0.02, atol=0.05)


def test_positions_split_between_formats():
    lin = PerTokenLinear(6, 32, 16)
    mod = QuantPerTokenLinear(lin, boundary=2, user_fmt="w8a16", item_fmt="fp8")
    x = torch.randn(5, 6, 32)
    with torch.no_grad():
        full = mod(x)
        torch.testing.assert_close(torch.cat([mod(x[:, :2], slice(0, 2)), mod(x[:, 2:], slice(2, 6))], 1), full)
        ref = lin(x)
    assert ((full - ref).norm() / ref.norm()) < 0.05


def test_requantizing_is_refused(tmp_path):
    save_checkpoint(make_model(), tmp_path / "f")
    quantize_checkpoint(str(tmp_path / "f"), str(tmp_path / "q"), "w8a16")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(str(tmp_path / "q"), str(tmp_path / "qq"), "w8a16")


def test_rankmixer_can_be_quantized_too():
    float_model = make_model(arch="rankmixer")
    with torch.no_grad():
        float_model.head[-1].weight.mul_(3.0)  # all-token pooling averages 16 tokens: spread the logits more
    model = quantize_model(copy.deepcopy(float_model), QuantRecipe("w8a16"))
    data = synthetic_dataset(20, seed=2)
    _, ref = _scores(float_model, data)
    _, full = _scores(model, data)
    err = full - ref
    assert ref.std() > 0.5  # logits spread well beyond the bounds below
    assert np.abs(err).max() < 0.1 * ref.std()
    sqnr_db = 10 * np.log10((ref**2).sum() / (err**2).sum())
    assert sqnr_db > 35


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton W8A16 kernel needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 8, 64, 300])
@pytest.mark.parametrize("group_size", [0, 64])
@pytest.mark.parametrize("stored_nk", [False, True], ids=["kn", "nk"])
def test_triton_w8a16_matches_reference(m, group_size, stored_nk):
    """``stored_nk``: the weights as the quantized module keeps them, (T, N, K) storage viewed
    (T, K, N), which takes the TMA kernel from 17 rows on Hopper."""
    from ugsep.quant.triton_kernels import w8a16_bmm

    torch.manual_seed(0)
    w = torch.randn(4, 256, 192, device="cuda")
    q, s = quantize_int8(w, group_size)
    if stored_nk:
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    x = torch.randn(m, 4, 256, device="cuda", dtype=torch.bfloat16).transpose(0, 1)  # strided like the model
    b = torch.randn(4, 192, device="cuda", dtype=torch.bfloat16)
    ref = torch.baddbmm(b.float().unsqueeze(1), x.float(), dequantize_int8(q, s))
    y = w8a16_bmm(x, q, s, b)
    torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.05 * ref.abs().max().item() / 10)
    y_gelu = w8a16_bmm(x, q, s, b, gelu=True)
    torch.testing.assert_close(y_gelu.float(), torch.nn.functional.gelu(ref), rtol=0.02,
                               atol=0.05 * ref.abs().max().item() / 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton FP8 row quantizer needs a CUDA GPU")
@pytest.mark.parametrize("k", [64, 768, 3000])
def test_triton_fp8_rows_match_torch(k):
    from ugsep.quant.triton_kernels import fp8_quantize_rows

    torch.manual_seed(0)
    x = torch.randn(3, 37, k, device="cuda", dtype=torch.bfloat16) * torch.logspace(-3, 3, 37, device="cuda")[:, None]
    q, s = fp8_quantize_rows(x)
    q_ref, s_ref = quantize_fp8_rows(x)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    # same scale, same round-to-nearest: at most one E4M3 step apart where multiplying by the
    # reciprocal rounds differently from the division
    assert (q.float() - q_ref.float()).abs().le(q_ref.float().abs() / 8 + 1e-6).all()
    assert (q.float() == q_ref.float()).float().mean() > 0.995


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="FP8 GEMMs need a CUDA GPU with FP8 (Ada/Hopper or newer)")
def test_fp8_bmm_on_gpu_matches_its_emulation():
    from ugsep.quant.fp8 import fp8_bmm

    torch.manual_seed(0)
    w = torch.randn(3, 256, 192, device="cuda") / 16
    q, s = quantize_fp8_weight(w)
    qt = q.transpose(1, 2).contiguous()  # (T, N, K)
    x = torch.randn(3, 100, 256, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(3, 192, device="cuda")
    xq, xs = quantize_fp8_rows(x)
    ref = torch.baddbmm(b.unsqueeze(1), xq.float() * xs, qt.float().transpose(1, 2) * s.unsqueeze(1))
    y = fp8_bmm(x, qt, s, b)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.02 * ref.abs().max().item())


def test_scales_stay_float32_when_the_model_is_cast_to_bf16():
    lin = PerTokenLinear(4, 32, 24)
    q = QuantPerTokenLinear(lin, boundary=2, user_fmt="w8a16", item_fmt="fp8")
    exact = {side: q._scale(side).clone() for side in ("user", "item")}
    q = q.to(torch.bfloat16)
    for side, s in exact.items():
        assert q._scale(side).dtype == torch.float32 and torch.equal(q._scale(side), s)
    # a state dict from before scales were stored as bits (float32 tensors) still loads
    old = {k: (v.view(torch.float32) if k.endswith("_scale") else v) for k, v in q.state_dict().items()}
    fresh = QuantPerTokenLinear(PerTokenLinear(4, 32, 24), boundary=2, user_fmt="w8a16", item_fmt="fp8")
    fresh.load_state_dict(old)
    assert all(torch.equal(fresh._scale(side), s) for side, s in exact.items())


@pytest.mark.parametrize("group_size", [0, 16])
def test_quant_linear_is_nn_linear_with_int8_weights(group_size):
    """Same forward as nn.Linear (any leading dims), weights int8 with per-channel (or group)
    scales: half a step from the float weights; the torch paths agree with each other."""
    lin = torch.nn.Linear(64, 48)
    q = QuantLinear(lin, group_size, backend=Backend.TORCH)
    assert q.q.dtype == torch.int8 and q.weight.shape == lin.weight.shape
    step = q.scale.view(torch.float32)[0].repeat_interleave(group_size or 64, dim=0).t()  # (N, K)
    assert ((q.weight - lin.weight).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(5, 7, 64)
    with torch.no_grad():
        y = q(x)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, q.weight, lin.bias))
        assert q(x[:0]).shape == (0, 7, 48)
        if not group_size:  # bf16 on the CPU: torch._weight_int8pack_mm
            torch.testing.assert_close(q(x.bfloat16()).float(), y, rtol=0.02, atol=0.05)
    scale = q.scale.clone()
    assert torch.equal(q.to(torch.bfloat16).scale, scale) and q.bias.dtype == torch.bfloat16


def test_quantizing_twice_and_bad_group_sizes_are_refused():
    model = quantize_model(make_model(), QuantRecipe("w8a16"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, QuantRecipe("w8a16"))
    fresh = make_model()
    with pytest.raises(ValueError, match=r"^user_tokenizer\.proj: group_size 5 does not divide the input width"):
        quantize_model(fresh, QuantRecipe("w8a16", group_size=5))
    assert not any(isinstance(m, QuantPerTokenLinear) for m in fresh.modules())  # nothing swapped
