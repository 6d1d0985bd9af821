"""score_groups with Triton kernels: the item tokens stay position-major (T_g, N, D) and the work
between the matrix products runs fused.

The eager path gathers each candidate's user heads, concatenates, transposes between (N, T, D)
and the (T, N, D) that per-position products read, and runs residual, LayerNorm, GELU and
FP8-quantization as separate passes. Here one kernel mixes + adds + normalizes (+ quantizes for
an FP8 layer), one applies GELU while quantizing the hidden rows, one adds the FFN residual +
normalizes. Same math as ``RankingModel.score_groups``; tests compare the two. CUDA only, no
backward: ``RankingModel.score_groups`` takes it where ``use_kernels`` resolved to Triton.

Under hyformer the candidate queries are the first N_g group positions: the candidates are put
in user order once per call, and each layer first decodes the query positions over the users'
cached K/V in one variable-length flash attention call (``ugsep.varlen_decode``; half precision),
then mixes and boosts all group positions with the same kernels as ugsep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugsep.state import UserState


def score_groups_fused(model: nn.Module, state: UserState, items: dict[str, Tensor], user_index: Tensor) -> Tensor:
    """Logits (N,) for N candidates from precomputed user state (a RankingModel, arch='ugsep' or
    'hyformer' in bf16/fp16)."""
    from ugsep.group_kernels import add_norm, mix_norm  # imports Triton: CUDA only
    from ugsep.quant.triton_kernels import fp8_quantize_rows

    if user_index.numel() == 0:  # no candidates: no kernels to launch
        return torch.empty(0, device=user_index.device, dtype=model.head[-1].weight.dtype)
    seq, order = model.seq, None
    if seq is not None:  # decoding reads each user's candidates as one run (no host sync to check first)
        order = torch.argsort(user_index, stable=True)
        items, user_index = {k: v[order] for k, v in items.items()}, user_index[order]
    g = model.item_tokenizer(items)  # (N, T_g, D)
    if seq is not None:
        from ugsep.varlen_decode import decode_plan

        ng = model.cfg.n_group_queries
        plan = decode_plan(user_index, state.valid, ng)
        queries = seq.group_queries.finish(state.pre[user_index], g.flatten(1))  # (N, N_g, D)
        g = torch.cat([queries, g], dim=1)
    g = g.transpose(0, 1).contiguous()  # (P_g, N, D): group positions first, laid out for the products
    for i, blk in enumerate(model.blocks):
        if seq is not None:
            g[:ng] = _decode(seq.decoders[i], g[:ng], model.layer_kv(state, i), plan, add_norm)
        comp = state.comp[:, i] if state.comp is not None else None
        s, s_fp8 = mix_norm(g, state.heads[:, i], user_index, comp, blk.norm1, blk.n_user,
                            fp8=_takes_fp8(blk.ffn.fc1))
        y = _ffn(blk, s, s_fp8, fp8_quantize_rows)
        g = add_norm(y, s, blk.norm2)  # (P_g, N, D)
    logits = model.output(g, *state.per_candidate(user_index), items, token_dim=0)
    return logits if order is None else torch.empty_like(logits).index_copy_(0, order, logits)


def _decode(dec: nn.Module, x: Tensor, kv: Tensor, plan, add_norm) -> Tensor:
    """Q' = LN(Q + W_o MHA(W_q Q, K, V)) of a QueryDecoder, position-major: x (N_g, N, D) -> (N_g, N, D);
    kv (B_u, 2, S, D) one layer of the state."""
    from ugsep.varlen_decode import varlen_decode

    q = dec.q(x.transpose(0, 1))  # (N, N_g, D): each user's queries in one run
    att = varlen_decode(q, kv[:, 0], kv[:, 1], dec.null_kv, plan, dec.n_heads)
    return add_norm(dec.out(att).transpose(0, 1).contiguous(), x, dec.norm)


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
