"""Candidates/s of the whole model on the GPU: rankmixer bf16 full forward (eager and under
torch.compile, default mode), ugsep bf16 split, ugsep split with W8A16 user side + FP8 item side,
each ugsep model with Backend.TORCH (torch ops everywhere: eager item side, dequantize + bmm for
W8A16) and with Backend.TRITON (the W8A16 kernel, the fused item side of ugsep.fused_groups);
quality of each vs its float model. Speedups are against eager rankmixer and the faster rankmixer.

    python benchmarks/end_to_end_model.py [--candidates 100] [--no-compile] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
import torch
from triton.testing import do_bench

from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import synthetic_dataset, synthetic_spec
from ugsep.kernels import Backend
from ugsep.metrics import auc
from ugsep.model import ModelConfig, RankingModel
from ugsep.quant import QuantRecipe, calibrate_fp8, quantize_model

sys.path.insert(0, "benchmarks")
from split_vs_full import LARGE, make_inputs  # noqa: E402


def to_device(batch, dtype=None):
    return {k: v.cuda() for k, v in batch.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rankmixer baseline")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    spec = synthetic_spec()
    float_rm = RankingModel(spec, ModelConfig(arch="rankmixer", compensation=False, **LARGE)).eval()
    float_us = RankingModel(spec, ModelConfig(arch="ugsep", compensation=False, **LARGE)).eval()
    float_us.load_state_dict(float_rm.state_dict())
    with torch.no_grad():  # a head that spreads logits, so AUC deltas mean something
        for m in (float_rm, float_us):
            m.head[-1].weight.mul_(20)

    held = synthetic_dataset(400, seed=21)
    hu, hi, hidx, _ = batch_tensors(held, np.arange(len(held)))
    recipe = QuantRecipe("w8a16+fp8")
    with torch.no_grad():
        recipe.float_layers = calibrate_fp8(float_us, recipe, hu, hi, hidx)
    quant = quantize_model(copy.deepcopy(float_us), recipe).cuda().to(torch.bfloat16)
    bf16_us = copy.deepcopy(float_us).cuda().to(torch.bfloat16)
    bf16_rm = copy.deepcopy(float_rm).cuda().to(torch.bfloat16)
    # name -> (float reference, model, kernels); kernels None: the full forward (rankmixer)
    models = {"rankmixer bf16 full": (float_rm, bf16_rm, None)}
    if not a.no_compile:
        models["rankmixer bf16 full compiled"] = (float_rm, torch.compile(bf16_rm, dynamic=False), None)
    models.update({"ugsep bf16 split torch": (float_us, bf16_us, Backend.TORCH),
                   "ugsep bf16 split triton": (float_us, bf16_us, Backend.TRITON),
                   "ugsep w8a16+fp8 torch": (float_us, quant, Backend.TORCH),
                   "ugsep w8a16+fp8 triton": (float_us, quant, Backend.TRITON)})

    users, items, idx = make_inputs(a.rows // a.candidates, a.candidates, "cuda")
    res = {"device": torch.cuda.get_device_name(), "candidates_per_user": a.candidates,
           "float_layers": recipe.float_layers, "models": {}}
    for name, (ref_model, model, kernels) in models.items():
        if kernels is not None:
            model.use_kernels(kernels)

        def run(m=model, users=users, items=items, idx=idx, split=kernels is not None):
            if not split:  # rankmixer: the full forward
                return m(users, items, idx)
            return m.score_groups(m.encode_users(users), items, idx)

        with torch.inference_mode():
            ms = do_bench(run, warmup=10, rep=200)
            ref = ref_model.score(hu, hi, hidx).numpy()
            got = run(model, to_device(hu), to_device(hi), hidx.cuda()).float().cpu().numpy()
        labels = np.random.default_rng(0).random(len(ref)) < 1 / (1 + np.exp(-ref))
        res["models"][name] = {"cand_per_s": len(idx) / (ms * 1e-3),
                               "auc_vs_float_delta": auc(labels, got) - auc(labels, ref),
                               "max_abs_logit_err": float(np.abs(got - ref).max())}
    base = res["models"]["rankmixer bf16 full"]["cand_per_s"]
    fastest = max(r["cand_per_s"] for n, r in res["models"].items() if n.startswith("rankmixer"))
    for name, r in res["models"].items():
        r["speedup_vs_rankmixer_bf16"] = r["cand_per_s"] / base
        r["speedup_vs_fastest_rankmixer"] = r["cand_per_s"] / fastest
        print(f"{name:>28}: {r['cand_per_s']:>12,.0f} cand/s  {r['speedup_vs_rankmixer_bf16']:.2f}x eager rankmixer  "
              f"{r['speedup_vs_fastest_rankmixer']:.2f}x fastest rankmixer  "
              f"AUC delta vs float {r['auc_vs_float_delta']:+.5f}  max|dlogit| {r['max_abs_logit_err']:.3f}")
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
