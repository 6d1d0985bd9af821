"""score_groups with Triton kernels: the item tokens stay position-major (P_g, N, D) from the
tokenizer to the head, and the work between the matrix products runs fused.

The eager path gathers each candidate's user heads, concatenates, transposes between (N, T, D)
and the (T, N, D) that per-position products read, and runs residual, LayerNorm, GELU and
FP8-quantization as separate passes. Here the tokenizer's and every layer's products write
straight into position-major buffers, one kernel mixes + adds + normalizes (+ quantizes for an
FP8 layer), the FFN's first product applies GELU in its epilogue (cuBLASLt's, bf16/fp16; an FP8
layer's kernel applies it while quantizing the hidden rows), one kernel adds the FFN residual +
normalizes, and after the last layer the same kernel also sums the positions for the head. Same
math as ``RankingModel.score_groups``, except that the fused GELU of a 16-bit float FFN is the
tanh form (within 1e-3 of the exact one, under bf16's rounding step); tests compare the two. CUDA
only, no backward: ``RankingModel.score_groups`` takes it where ``use_kernels`` resolved to Triton.

Under hyformer the candidate queries are the first N_g group positions: the candidates are put
in user order once per call, the queries are generated position-major (the candidate part of the
first linear as one product, the user part + GELU in one kernel), and each layer first decodes the
query positions over the users' cached K/V in one variable-length flash attention call
(``ugsep.varlen_decode``; half precision) whose null-slot merge writes the rows back
position-major, then mixes and boosts all group positions with the same kernels as ugsep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugsep.layers import PerTokenLinear, per_position_addmm
from ugsep.state import UserState

HALF = (torch.bfloat16, torch.float16)


def score_groups_fused(model: nn.Module, state: UserState, items: dict[str, Tensor], user_index: Tensor,
                       by_position: bool | None = None) -> Tensor:
    """Logits (N,) for N candidates from precomputed user state (a RankingModel, arch='ugsep' or
    'hyformer' in bf16/fp16). ``by_position``: the decoding row order (``varlen_decode.decode_plan``;
    None picks it)."""
    from ugsep.group_kernels import add_norm, add_norm_pool, mix_norm  # imports Triton: CUDA only

    if user_index.numel() == 0:  # no candidates: no kernels to launch
        return torch.empty(0, device=user_index.device, dtype=model.head[-1].weight.dtype)
    seq, order, ng = model.seq, None, 0
    if seq is not None:  # decoding reads each user's candidates as one run (no host sync to check first)
        order = torch.argsort(user_index, stable=True)
        items, user_index = {k: v[order] for k, v in items.items()}, user_index[order]
        ng = model.cfg.n_group_queries
    n, dtype = user_index.numel(), model.item_tokenizer.proj.bias.dtype
    g = torch.empty((ng + model.cfg.n_group_tokens, n, model.cfg.d_model), device=user_index.device, dtype=dtype)
    if seq is not None:  # the plan's host read is queued first and waited for after the queries
        from ugsep.varlen_decode import decode_plan, plan_stats

        stats = plan_stats(user_index, state.valid, ng)
    _tokens_into(model.item_tokenizer, items, g[ng:])  # (T_g, N, D)
    if seq is not None:
        _queries_into(seq.group_queries, state.pre, user_index, g[ng:], g[:ng])  # (N_g, N, D)
        plan = decode_plan(user_index, state.valid, ng, by_position, stats)
    pooled = None
    for i, blk in enumerate(model.blocks):
        if seq is not None:
            _decode(seq.decoders[i], g[:ng], model.layer_kv(state, i), plan, add_norm)
        comp = state.comp[:, i] if state.comp is not None else None
        s, s_fp8 = mix_norm(g, state.heads[:, i], user_index, comp, blk.norm1, blk.n_user,
                            fp8=_takes_fp8(blk.ffn.fc1))
        y = _ffn(blk, s, s_fp8)
        if i < len(model.blocks) - 1:
            g = add_norm(y, s, blk.norm2)  # (P_g, N, D)
        else:  # the head pools the group tokens: their mean ("group"), or their sum + the users' ("all")
            pooled = add_norm_pool(y, s, blk.norm2, 1.0 / len(s) if model.head.pool == "group" else 1.0)
    # one pooled "token" (1, N, D): the head's mean or sum over the token dim leaves it as it is
    logits = model.output(pooled[None], *state.per_candidate(user_index), items, token_dim=0)
    return logits if order is None else torch.empty_like(logits).index_copy_(0, order, logits)


def _tokens_into(tok: nn.Module, items: dict[str, Tensor], out: Tensor) -> None:
    """The item tokenizer (``Tokenizer.forward``), position-major into out (T_g, N, D)."""
    e = tok.embed(items).to(out.dtype)  # (N, F)
    e = F.pad(e, (0, tok.n_tokens * tok.chunk - e.shape[-1]))
    _per_position_into(tok.proj, e.view(-1, tok.n_tokens, tok.chunk).transpose(0, 1), out)  # x: (T_g, N, chunk)


def _queries_into(gen: nn.Module, pre: Tensor, user_index: Tensor, tokens: Tensor, out: Tensor) -> None:
    """``QueryGenerator.finish`` of the candidate queries from the item tokens (T_g, N, D), position-major
    into out (N_g, N, D); ``pre`` (B_u, N_g, D) is the user part of the first linear, per user."""
    from ugsep.group_kernels import add_user_gelu

    x = tokens.transpose(0, 1).reshape(tokens.shape[1], -1)  # (N, T_g * D): the candidate's GI columns
    w = gen.fc1.weight[:, gen.n_user_in :]  # (N_g, T_g * D, D)
    h = x @ w.permute(1, 0, 2).reshape(w.shape[1], -1)  # (N, N_g * D): every query's candidate part at once
    _per_position_into(gen.fc2, add_user_gelu(h, pre, user_index), out)  # GELU(pre + h): (N_g, N, D)


def _decode(dec: nn.Module, x: Tensor, kv: Tensor, plan, add_norm) -> None:
    """Q' = LN(Q + W_o MHA(W_q Q, K, V)) of a QueryDecoder, in place on x (N_g, N, D); kv (B_u, 2, S, D)
    one layer of the state."""
    from ugsep.varlen_decode import decode_rows

    rows = x.view(-1, x.shape[-1]) if plan.by_position else x.transpose(0, 1).reshape(-1, x.shape[-1])
    att = decode_rows(dec.q(rows), kv[:, 0], kv[:, 1], dec.null_kv, plan, dec.n_heads)  # (N_g * N, D)
    add_norm(dec.out(att), x.view(-1, x.shape[-1]), dec.norm, out=x.view(-1, x.shape[-1]))


def _ffn(blk: nn.Module, s: Tensor, s_fp8: tuple[Tensor, Tensor] | None) -> Tensor:
    """The per-token FFN of one layer's group positions, position-major: (T_g, N, D) -> (T_g, N, D)."""
    from ugsep.quant.triton_kernels import fp8_quantize_rows

    fc1, fc2 = blk.ffn.fc1, blk.ffn.fc2
    positions = slice(blk.n_user, blk.n_tokens)
    if type(fc1) is PerTokenLinear and s.dtype in HALF:  # GELU in the product's epilogue
        h = torch.empty((*s.shape[:2], fc1.d_out), device=s.device, dtype=s.dtype)
        _per_position_into(fc1, s, h, positions, gelu=True)
    else:
        h = fc1.positions_first(s, positions, s_fp8) if s_fp8 else fc1.positions_first(s, positions)
        if _takes_fp8(fc2):
            return fc2.positions_first(None, positions, fp8_quantize_rows(h, gelu=True))
        h = F.gelu(h)
    return fc2.positions_first(h, positions)


def _per_position_into(lin: nn.Module, x: Tensor, out: Tensor, positions: slice = slice(None),
                       gelu: bool = False) -> None:
    """out[t] = x[t] @ W[t] + b[t] (then GELU, tanh form: ``gelu`` needs a float PerTokenLinear) for the
    positions of a per-token linear: x (T', N, K), any strides with unit last; out (T', N, D) contiguous.
    A float PerTokenLinear writes each position's product in place (bias in the epilogue)."""
    if type(lin) is not PerTokenLinear:  # quantized: its own kernels, then one copy
        out.copy_(lin.positions_first(x, positions))
        return
    per_position_addmm(x, lin.weight[positions], lin.bias[positions], out=out, gelu=gelu)


def _takes_fp8(layer: nn.Module) -> bool:
    """Whether a per-token linear runs its item positions in FP8 (a quantized layer's recipe)."""
    return getattr(layer, "item_fmt", "float") == "fp8"
