"""score_groups with Triton kernels: the item tokens stay position-major (T_g, N, D) and the work
between the matrix products runs fused.

The eager path gathers each candidate's user heads, concatenates, transposes between (N, T, D)
and the (T, N, D) that per-position products read, and runs residual, LayerNorm, GELU and
FP8-quantization as separate passes. Here one kernel mixes + adds + normalizes (+ quantizes for
an FP8 layer), one applies GELU while quantizing the hidden rows, one adds the FFN residual +
normalizes. Same math as ``RankingModel.score_groups``; tests compare the two. CUDA only, no
backward: ``RankingModel.score_groups`` takes it where ``use_kernels`` resolved to Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugsep.state import UserState


def score_groups_fused(model: nn.Module, state: UserState, items: dict[str, Tensor], user_index: Tensor) -> Tensor:
    """Logits (N,) for N candidates from precomputed user state (a RankingModel with arch='ugsep')."""
    from ugsep.group_kernels import add_norm, mix_norm  # imports Triton: CUDA only
    from ugsep.quant.triton_kernels import fp8_quantize_rows

    if user_index.numel() == 0:  # no candidates: no kernels to launch
        return torch.empty(0, device=user_index.device, dtype=model.head[-1].weight.dtype)
    g = model.item_tokenizer(items).transpose(0, 1).contiguous()  # (T_g, N, D): already laid out so
    for i, blk in enumerate(model.blocks):
        comp = state.comp[:, i] if state.comp is not None else None
        s, s_fp8 = mix_norm(g, state.heads[:, i], user_index, comp, blk.norm1, blk.n_user,
                            fp8=_takes_fp8(blk.ffn.fc1))
        y = _ffn(blk, s, s_fp8, fp8_quantize_rows)
        g = add_norm(y, s, blk.norm2)  # (T_g, N, D)
    return model.output(g, *state.per_candidate(user_index), items, token_dim=0)


def _ffn(blk: nn.Module, s: Tensor, s_fp8: tuple[Tensor, Tensor] | None, fp8_quantize_rows) -> Tensor:
    """The per-token FFN of one layer's group positions, position-major: (T_g, N, D) -> (T_g, N, D)."""
    fc1, fc2 = blk.ffn.fc1, blk.ffn.fc2
    positions = slice(blk.n_user, blk.n_tokens)
    h = fc1.positions_first(s, positions, s_fp8) if s_fp8 else fc1.positions_first(s, positions)
    if _takes_fp8(fc2):
        return fc2.positions_first(None, positions, fp8_quantize_rows(h, gelu=True))
    return fc2.positions_first(F.gelu(h), positions)


def _takes_fp8(layer: nn.Module) -> bool:
    """Whether a per-token linear runs its item positions in FP8 (a quantized layer's recipe)."""
    return getattr(layer, "item_fmt", "float") == "fp8"
