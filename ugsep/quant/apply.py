"""Apply a QuantRecipe to a RankingModel: swap its linears for quantized ones (module swap, same forward).

What each layer becomes (``quantizable_layers`` and ``w8a16_linears`` list them):

- per-token linears (``QuantPerTokenLinear``): positions [0, boundary) take the recipe's user-side
  format (W8A16), [boundary, T) its item-side one (FP8 unless calibration kept the layer float):
  the user tokenizer (user side only); each block's FFN, with the boundary at
  ``cfg.n_user_positions`` (user tokens, and under hyformer the user queries before them);
  hyformer's user-query generator (user side only) and candidate-query generator (below);
- hyformer's ``nn.Linear`` sequence layers (``QuantLinear``), all W8A16: the event projection,
  every encoder layer, the decoders' K/V projection or CollectiveKV router and user projection (all
  once per user; the pools stay float), and the decoders' query
  and output projections, which serve user queries (once per user) and candidate queries (per
  candidate) through one module: one format for both calls, and W8A16 is the user side's;
- the item tokenizer (small K), the blocks' compensation maps and the head stay float.

HyFormer's candidate-query generator: ``fc2`` is called as a layer and takes the item side's
format on every position (FP8 where calibration allows). ``fc1`` is not called:
``QueryGenerator.user_part`` (once per user) and ``finish`` (per candidate) read ``fc1.weight``
and multiply it themselves, so its inputs cannot be rounded to FP8; it is W8A16 on every position
(``QuantPerTokenLinear.weight`` hands those products the dequantized int8 weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.kernels import Backend
from ugsep.layers import PerTokenLinear
from ugsep.model import RankingModel
from ugsep.quant.fp8 import quantize_fp8_rows, quantize_fp8_weight
from ugsep.quant.modules import QuantLinear, QuantPerTokenLinear, _QuantLayer
from ugsep.quant.recipe import QuantRecipe


def quantizable_layers(model: RankingModel) -> dict[str, tuple[PerTokenLinear, int]]:
    """Per-token linears: name -> (layer, boundary between its user and item positions)."""
    t_u = model.cfg.n_user_positions  # the blocks' user positions: hyformer's user queries count
    layers = {"user_tokenizer.proj": (model.user_tokenizer.proj, model.user_tokenizer.n_tokens)}
    for i, blk in enumerate(model.blocks):
        layers[f"blocks.{i}.ffn.fc1"] = (blk.ffn.fc1, t_u)
        layers[f"blocks.{i}.ffn.fc2"] = (blk.ffn.fc2, t_u)
    if model.seq is not None:
        uq, gq = model.seq.user_queries, model.seq.group_queries
        layers["seq.user_queries.fc1"] = (uq.fc1, uq.n)
        layers["seq.user_queries.fc2"] = (uq.fc2, uq.n)
        layers["seq.group_queries.fc1"] = (gq.fc1, gq.n)  # W8A16 everywhere: its weights are read, see above
        layers["seq.group_queries.fc2"] = (gq.fc2, 0)
    return layers


def w8a16_linears(model: RankingModel) -> dict[str, nn.Linear]:
    """HyFormer's nn.Linear sequence layers, name -> layer; all W8A16 (none outside hyformer)."""
    if model.seq is None:
        return {}
    seq = model.seq
    layers = {"seq.embed.proj": seq.embed.proj}
    for i, enc in enumerate(seq.encoders):
        names = ("ffn.gate_up", "ffn.down") + (("qkv", "out") if enc.kind == "attention" else ())
        layers.update({f"seq.encoders.{i}.{n}": enc.get_submodule(n) for n in names})
    for i, dec in enumerate(seq.decoders):
        kv = ("kv",) if dec.ckv is None else ("ckv.router", "ckv.user")  # CollectiveKV: its pool stays float
        layers.update({f"seq.decoders.{i}.{n}": dec.get_submodule(n) for n in (*kv, "q", "out")})
    return layers


@torch.no_grad()
def calibrate_fp8(model: RankingModel, recipe: QuantRecipe, users: dict, items: dict, idx: Tensor) -> list[str]:
    """Item-side layers whose FP8 output error (relative L2 over the calibration rows, without
    bias) exceeds the recipe's bound stay float.

    Every per-token linear with item positions is measured on the inputs ``model.score`` hands it,
    whichever module calls it (the blocks' group positions, hyformer's candidate-query ``fc2``),
    with torch ops for the pass: the fused Triton item side calls the products past the hooks.
    """
    layers = {name: lb for name, lb in quantizable_layers(model).items() if lb[1] < lb[0].weight.shape[0]}
    seen: dict[str, list[tuple[int, Tensor]]] = {name: [] for name in layers}

    def grab(name: str, boundary: int):
        def hook(mod: PerTokenLinear, args: tuple) -> None:
            x, positions = args[0], (args[1] if len(args) > 1 else slice(None))
            start, stop, _ = positions.indices(mod.weight.shape[0])
            if stop > boundary:  # the call's item positions [lo, stop), x's positions from `start`
                lo = max(start, boundary)
                seen[name].append((lo, x[:, lo - start : stop - start].transpose(0, 1).float()))  # (T', M, K)

        return hook

    hooks = [layer.register_forward_pre_hook(grab(name, b)) for name, (layer, b) in layers.items()]
    backend = model.backend
    try:
        model.use_kernels(Backend.TORCH)
        model.score(users, items, idx)
    finally:
        for h in hooks:
            h.remove()
        model.use_kernels(backend)
    sensitive = []
    for name, calls in seen.items():
        err = ref_sq = 0.0
        for lo, x in calls:
            w = layers[name][0].weight[lo : lo + x.shape[0]].float()  # (T', K, N)
            ref = torch.bmm(x, w)
            xq, xs = quantize_fp8_rows(x)
            wq, ws = quantize_fp8_weight(w)
            approx = torch.bmm(xq.float() * xs, wq.float() * ws.unsqueeze(1))
            err, ref_sq = err + (approx - ref).pow(2).sum().item(), ref_sq + ref.pow(2).sum().item()
        if calls and (err / max(ref_sq, 1e-24)) ** 0.5 > recipe.fp8_max_rel_error:
            sensitive.append(name)
    return sensitive


def quantize_model(model: RankingModel, recipe: QuantRecipe, backend: Backend | None = None) -> RankingModel:
    """Swap quantizable layers in place; ``recipe.float_layers`` keep their item side in float.
    ``backend``: the kernels for the whole model (``RankingModel.use_kernels``); None keeps the
    model's choice. A ``group_size`` must divide every quantized layer's input width (the error
    names the first that it does not)."""
    if any(isinstance(m, _QuantLayer) for m in model.modules()):
        raise ValueError("the model is already quantized: quantize its float checkpoint instead")
    backend = model.backend if backend is None else Backend(backend)
    swaps: dict[str, nn.Module] = {}
    try:  # every layer built before any is swapped: a layer that cannot be leaves the model as it was
        for name, (layer, boundary) in quantizable_layers(model).items():
            user_fmt = "w8a16" if recipe.user_w8a16 else "float"
            item_fmt = "fp8" if recipe.item_fp8 and name not in recipe.float_layers else "float"
            swaps[name] = QuantPerTokenLinear(layer, boundary, user_fmt, item_fmt, recipe.group_size)
        for name, lin in (w8a16_linears(model) if recipe.user_w8a16 else {}).items():
            swaps[name] = QuantLinear(lin, recipe.group_size)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    for name, module in swaps.items():
        _set(model, name, module)
    return model.use_kernels(backend)


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
