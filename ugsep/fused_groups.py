"""score_groups on CUDA: the item tokens stay position-major (T_g, N, D) and the work between
the matrix products runs in fused Triton kernels.

Eager score_groups spends most of its GPU time outside the GEMMs: gathering each candidate's
user heads, concatenating, transposing between (N, T, D) and the (T, N, D) that per-position
products read, and separate residual, LayerNorm, GELU and FP8-quantization passes. Here one
kernel mixes + adds + normalizes (+ quantizes for an FP8 layer), one applies GELU while
quantizing the hidden rows, one adds the FFN residual + normalizes. Same math as
``RankingModel.score_groups``; tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugsep.optional_triton import GROUP_KERNELS, triton_kernel
from ugsep.state import UserState


def fused_available(x: Tensor) -> bool:
    """True on CUDA with Triton installed, outside autograd (the kernels have no backward)."""
    return x.is_cuda and not torch.is_grad_enabled() and triton_kernel("mix_norm", GROUP_KERNELS) is not None


def score_groups_fused(model: nn.Module, state: UserState, items: dict[str, Tensor], user_index: Tensor) -> Tensor:
    """Logits (N,) for N candidates from precomputed user state (a RankingModel with arch='ugsep')."""
    cfg = model.cfg
    if user_index.numel() == 0:  # no candidates: no kernels to launch
        return torch.empty(0, device=user_index.device, dtype=model.head[-1].weight.dtype)
    g = model.item_tokenizer(items).transpose(0, 1).contiguous()  # (T_g, N, D): already laid out so
    for i, blk in enumerate(model.blocks):
        comp = state.comp[:, i] if state.comp is not None else None
        g = _group_step(blk, g, state.heads[:, i], user_index, comp)
    if cfg.pool == "group":
        return model.head(g.mean(0)).squeeze(-1)
    total = g.sum(0) + state.pooled[user_index]
    return model.head(total / cfg.n_tokens).squeeze(-1)


def _group_step(blk: nn.Module, g: Tensor, heads: Tensor, user_index: Tensor, comp: Tensor | None) -> Tensor:
    """One TokenMixer layer for the group positions: g (T_g, N, D) -> (T_g, N, D)."""
    mix_norm, add_norm = triton_kernel("mix_norm", GROUP_KERNELS), triton_kernel("add_norm", GROUP_KERNELS)
    fc1, fc2 = blk.ffn.fc1, blk.ffn.fc2
    positions = slice(blk.n_user, blk.n_tokens)
    s, s_fp8 = mix_norm(g, heads, user_index, comp, blk.norm1, blk.n_user, fp8=_takes_fp8(fc1))
    h = fc1.positions_first(s, positions, s_fp8) if s_fp8 else fc1.positions_first(s, positions)
    if _takes_fp8(fc2):
        y = fc2.positions_first(None, positions, triton_kernel("fp8_quantize_rows")(h, gelu=True))
    else:
        y = fc2.positions_first(F.gelu(h), positions)
    return add_norm(y, s, blk.norm2)


def _takes_fp8(layer: nn.Module) -> bool:
    """Whether a per-token linear runs its item positions in FP8 (a quantized layer's recipe)."""
    return getattr(layer, "item_fmt", "float") == "fp8"
