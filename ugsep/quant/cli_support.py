"""`ugsep quantize`: calibrate on synthetic rows, quantize, save with lineage."""

from __future__ import annotations

import numpy as np
import torch

from ugsep.checkpoint import load_checkpoint, read_config, save_checkpoint
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import generate_day, join_day
from ugsep.quant.apply import calibrate_fp8, quantize_model
from ugsep.quant.recipe import QuantRecipe


def quantize_checkpoint(ckpt: str, out: str, mode: str, calib_rows: int = 4096, group_size: int = 0,
                        seed: int = 0) -> dict:
    meta = read_config(ckpt)
    if meta.get("quantization"):
        raise ValueError(f"{ckpt} is already quantized ({meta['quantization']['recipe']['mode']})")
    model, version = load_checkpoint(ckpt)
    recipe = QuantRecipe(mode=mode, group_size=group_size)
    if recipe.item_fp8:  # calibration rows come from the synthetic generator's feature layout
        day = generate_day(n_users=max(calib_rows // 40, 8), seed=seed + 101)
        try:
            data = join_day(day.users, day.items, day.candidates, model.spec)
        except KeyError as e:
            raise ValueError(f"FP8 calibration needs the synthetic feature layout; {ckpt} lacks {e}") from None
        rows = np.random.default_rng(seed).permutation(len(data))[:calib_rows]
        users, items, idx, _ = batch_tensors(data, rows)
        recipe.float_layers = calibrate_fp8(model, recipe, users, items, idx)
    with torch.no_grad():
        quantize_model(model, recipe)
    new_version = save_checkpoint(model, out, quant={"recipe": recipe.to_dict(), "base_model_version": version})
    return {"model_version": new_version, "base_model_version": version, "recipe": recipe.to_dict()}
