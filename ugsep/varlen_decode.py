"""Candidate-query decoding over each user's cached K/V with flash attention's variable-length
kernel (CUDA, bf16/fp16): the fused item side's attention (``ugsep.fused_groups``).

The candidates of one user are that user's query sequence and the user's events its key
sequence, as packed sequences are in LLM serving: one kernel call for the whole batch, no
padded query slots, no mask tensor, and each user's K/V read in place from the state:

- queries: (total_q, H, d) with candidates sorted by user, so user u's queries are the rows
  ``cu_q[u]:cu_q[u + 1]`` (its candidates x N_g queries);
- keys/values: the state's (B_u, S, D) slab viewed as (B_u * S, H, d). Histories are
  right-aligned (padding first, the latest event last), so user u's events are the last
  ``used_k[u]`` rows of its S: ``cu_k[u] = u * S + S - used_k[u]`` and ``seqused_k`` stops the
  kernel there (the next user's padding follows, never read).
- the learned null slot (``QueryDecoder.null_kv``) is not stored per user: the kernel returns
  the log-sum-exp of each query's scores over the events, and the null slot's score and value
  are merged in afterwards, exactly (softmax over [events, null]). A user without events
  attends to the null slot alone, as on the padded path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class DecodePlan:
    """Where each user's queries and keys sit for the kernel; built once per ``score_groups`` call."""

    cu_q: Tensor  # (B_u + 1,) int32: user u's query rows are cu_q[u]:cu_q[u + 1]
    cu_k: Tensor  # (B_u + 1,) int32: user u's events start at row cu_k[u] of the (B_u * S) keys
    used_k: Tensor  # (B_u,) int32: events per user
    has_events: Tensor  # (total_q,) bool: the query's user has at least one event
    max_q: int
    max_k: int


def decode_plan(user_index: Tensor, valid: Tensor, n_queries: int) -> DecodePlan:
    """user_index (N,) sorted ascending; valid (B_u, S) 1 where an event is, right-aligned."""
    b_u, s = valid.shape
    lens = (valid > 0.5).sum(1)  # (B_u,)
    counts = torch.bincount(user_index, minlength=b_u)  # candidates per user
    misaligned = ((valid > 0.5) != (torch.arange(s, device=valid.device) >= s - lens[:, None])).any()
    bad, most = torch.stack([misaligned.long(), counts.max()]).tolist()  # one host sync for both
    if bad:
        raise ValueError("varlen decoding needs right-aligned histories (padding first, the latest event last)")
    starts = torch.arange(b_u, device=valid.device) * s + s - lens
    return DecodePlan(
        cu_q=F.pad(torch.cumsum(counts * n_queries, 0), (1, 0)).int(),
        cu_k=torch.cat([starts, starts.new_full((1,), b_u * s)]).int(),
        used_k=lens.int(),
        has_events=(lens > 0)[user_index].repeat_interleave(n_queries),
        max_q=most * n_queries,
        max_k=s,
    )


def varlen_decode(q: Tensor, k: Tensor, v: Tensor, null_kv: Tensor, plan: DecodePlan, n_heads: int) -> Tensor:
    """softmax([q K^T, q k_null] / sqrt(d)) [V; v_null] per head.

    q (N, N_q, D) with N sorted by user; k, v (B_u, S, D); null_kv (2, D) -> (N, N_q, D)."""
    n, nq, d = q.shape
    hd = d // n_heads
    qh = q.reshape(n * nq, n_heads, hd)
    out, lse = torch.ops.aten._flash_attention_forward(
        qh, k.reshape(-1, n_heads, hd), v.reshape(-1, n_heads, hd), plan.cu_q, plan.cu_k, plan.max_q, plan.max_k,
        0.0, False, False, seqused_k=plan.used_k)[:2]
    lse = lse.view(n_heads, -1)[:, : n * nq].t()  # (total_q, H): log-sum-exp of the scaled event scores
    lse = torch.where(plan.has_events[:, None], lse, -math.inf)  # no events: the kernel's value is a placeholder
    null_k, null_v = null_kv.view(2, n_heads, hd)
    s_null = (qh.float() * null_k.float()).sum(-1) / math.sqrt(hd)  # (total_q, H)
    top = torch.maximum(lse, s_null)
    w_events, w_null = torch.exp(lse - top), torch.exp(s_null - top)
    total = w_events + w_null  # the weights are per (query, head); the wide products stay in q's dtype
    merged = torch.addcmul(out * (w_events / total).to(q.dtype)[..., None], null_v.to(q.dtype),
                           (w_null / total).to(q.dtype)[..., None])
    return merged.view(n, nq, d)
