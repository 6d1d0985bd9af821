"""Apply a QuantRecipe to a RankingModel: swap its per-token linears (module swap, same forward)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.kernels import Backend
from ugsep.layers import PerTokenLinear
from ugsep.model import RankingModel
from ugsep.quant.fp8 import quantize_fp8_rows, quantize_fp8_weight
from ugsep.quant.modules import QuantPerTokenLinear
from ugsep.quant.recipe import QuantRecipe


def quantizable_layers(model: RankingModel) -> dict[str, tuple[PerTokenLinear, int]]:
    """name -> (layer, boundary between user and item positions)."""
    t_u = model.cfg.n_user_tokens
    layers = {"user_tokenizer.proj": (model.user_tokenizer.proj, model.user_tokenizer.n_tokens)}
    for i, blk in enumerate(model.blocks):
        layers[f"blocks.{i}.ffn.fc1"] = (blk.ffn.fc1, t_u)
        layers[f"blocks.{i}.ffn.fc2"] = (blk.ffn.fc2, t_u)
    return layers  # the item tokenizer (small K) and the head stay float


@torch.no_grad()
def calibrate_fp8(model: RankingModel, recipe: QuantRecipe, users: dict, items: dict, idx: Tensor) -> list[str]:
    """Item-side layers whose FP8 output error (relative L2) exceeds the recipe's bound stay float."""
    inputs: dict[str, Tensor] = {}
    hooks = []
    t_u = model.cfg.n_user_tokens
    for name, (layer, boundary) in quantizable_layers(model).items():
        if boundary >= layer.weight.shape[0]:
            continue

        def grab(mod, args, name=name):
            x, positions = args[0], (args[1] if len(args) > 1 else slice(None))
            if positions.start == t_u or positions == slice(None):
                inputs[name] = x[:, -(mod.weight.shape[0] - t_u):].transpose(0, 1).float()  # (T_g, M, K)

        hooks.append(layer.register_forward_pre_hook(grab))
    model.score(users, items, idx)
    for h in hooks:
        h.remove()
    sensitive = []
    layers = quantizable_layers(model)
    for name, x in inputs.items():
        w = layers[name][0].weight[t_u:].float()
        ref = torch.bmm(x, w)
        xq, xs = quantize_fp8_rows(x)
        wq, ws = quantize_fp8_weight(w)
        approx = torch.bmm(xq.float() * xs, wq.float() * ws.unsqueeze(1))
        if ((approx - ref).norm() / ref.norm().clamp(min=1e-12)).item() > recipe.fp8_max_rel_error:
            sensitive.append(name)
    return sensitive


def quantize_model(model: RankingModel, recipe: QuantRecipe, backend: Backend | None = None) -> RankingModel:
    """Swap quantizable layers in place; ``recipe.float_layers`` keep their item side in float.
    ``backend``: the kernels for the whole model (``RankingModel.use_kernels``); None keeps the
    model's choice."""
    backend = model.backend if backend is None else Backend(backend)
    for name, (layer, boundary) in quantizable_layers(model).items():
        user_fmt = "w8a16" if recipe.user_w8a16 else "float"
        item_fmt = "fp8" if recipe.item_fp8 and name not in recipe.float_layers else "float"
        _set(model, name, QuantPerTokenLinear(layer, boundary, user_fmt, item_fmt, recipe.group_size))
    return model.use_kernels(backend)


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
