"""Candidate-query decoding over each user's cached K/V with flash attention's variable-length
kernel (CUDA, bf16/fp16): the fused item side's attention (``ugsep.fused_groups``).

The candidates of one user read that user's events as their key sequence, as packed sequences
are in LLM serving: one kernel call for the whole batch, no padded query slots, no mask tensor,
and each user's K/V read in place from the state. Candidates are sorted by user, and the query
rows are packed in one of two orders (``DecodePlan.by_position``):

- by position, (N_q, N) rows: row p * N + n is query p of candidate n, the position-major
  layout the item side keeps, so no copy in or out; each (query position, user) pair is one
  query sequence (rows ``cu_q``), B_u * N_q sequences in all;
- by candidate, (N, N_q) rows: user u's candidates' queries are one sequence of
  ``candidates x N_q`` rows; it costs a transposed copy of the queries but fills the kernel's
  128-row query tiles where users have few candidates. ``decode_plan`` picks the order that
  needs fewer tiles (by position where it needs at most a quarter more).

Keys/values: the state's (B_u, S, D) slab viewed as (B_u * S, H, d). Histories are right-aligned
(padding first, the latest event last), so user u's events are the last ``lens[u]`` rows of its
S: a sequence of user u starts at row ``u * S + S - lens[u]`` and ``seqused_k`` stops the kernel
after ``lens[u]`` rows (the next user's padding follows, never read).

The learned null slot (``QueryDecoder.null_kv``) is not stored per user: the kernel returns the
log-sum-exp of each query's scores over the events, and the null slot's score and value are
merged in afterwards, exactly (softmax over [events, null]; ``group_kernels.merge_null_slot``).
A user without events attends to the null slot alone, as on the padded path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FLASH_TILE_ROWS = 128  # query rows per tile of the flash forward kernel at these head sizes
BY_POSITION_MAX_TILES = 1.25  # by position wherever it needs at most this many tiles per by-candidate tile


@dataclass(frozen=True)
class DecodePlan:
    """Where each sequence's queries and keys sit for the kernel; built once per ``score_groups`` call."""

    cu_q: Tensor  # (n_seq + 1,) int32: sequence b's query rows are cu_q[b]:cu_q[b + 1]
    cu_k: Tensor  # (n_seq + 1,) int32: sequence b's events start at row cu_k[b] of the (B_u * S) keys
    used_k: Tensor  # (n_seq,) int32: events of sequence b
    lens: Tensor  # (B_u,) int32: events per user
    user_index: Tensor  # (N,): each candidate's user, sorted
    n_queries: int
    by_position: bool  # rows (N_q, N) position-major, else (N, N_q)
    max_q: int
    max_k: int


@dataclass(frozen=True)
class PlanStats:
    """The four integers the plan needs on the host (a misalignment flag, the most candidates of a
    user, the kernel tiles of either row order), read back without blocking: ``plan_stats`` queues
    the copy, and ``decode_plan`` waits only for it, so the GPU runs the work queued in between
    (the item tokens and queries) while the host waits, and has the decoding queued behind it."""

    lens: Tensor  # (B_u,) events per user, on the device
    counts: Tensor  # (B_u,) candidates per user, on the device
    host: Tensor  # (4,) int64 on the host (pinned where the copy is asynchronous)
    ready: torch.cuda.Event | None  # recorded after the copy (None: on the CPU, already there)


def plan_stats(user_index: Tensor, valid: Tensor, n_queries: int) -> PlanStats:
    """Queue the plan's host read: user_index (N,) sorted; valid (B_u, S) 1 where an event is."""
    b_u, s = valid.shape
    lens = (valid > 0.5).sum(1)  # (B_u,)
    # candidates per user; bincount would read its output size back to the host, index_add_ does not
    counts = torch.zeros(b_u, dtype=torch.long, device=valid.device).index_add_(
        0, user_index, torch.ones_like(user_index, dtype=torch.long))
    misaligned = ((valid > 0.5) != (torch.arange(s, device=valid.device) >= s - lens[:, None])).any()
    tiles = FLASH_TILE_ROWS
    tiles_pos = (n_queries * ((counts + tiles - 1) // tiles)).sum()
    tiles_cand = ((counts * n_queries + tiles - 1) // tiles).sum()
    stats = torch.stack([misaligned.long(), counts.max() if b_u else counts.sum(), tiles_pos, tiles_cand])
    if not stats.is_cuda:
        return PlanStats(lens, counts, stats, None)
    host = stats.to("cpu", non_blocking=True)  # a pinned destination: the copy is queued, not waited for
    ready = torch.cuda.Event()
    ready.record()
    return PlanStats(lens, counts, host, ready)


def decode_plan(user_index: Tensor, valid: Tensor, n_queries: int, by_position: bool | None = None,
                stats: PlanStats | None = None) -> DecodePlan:
    """user_index (N,) sorted ascending; valid (B_u, S) 1 where an event is, right-aligned.
    ``by_position``: the row order (None: the one that needs fewer kernel tiles, see the module doc).
    ``stats``: ``plan_stats`` of the same inputs, queued earlier (None: queued and waited for here)."""
    b_u, s = valid.shape
    stats = stats if stats is not None else plan_stats(user_index, valid, n_queries)
    if stats.ready is not None:
        stats.ready.synchronize()  # the plan's only host sync: it waits for the four integers alone
    bad, most, t_pos, t_cand = stats.host.tolist()
    if bad:
        raise ValueError("varlen decoding needs right-aligned histories (padding first, the latest event last)")
    if by_position is None:
        by_position = t_pos <= BY_POSITION_MAX_TILES * t_cand
    lens, counts = stats.lens, stats.counts
    starts = torch.arange(b_u, device=valid.device) * s + s - lens  # (B_u,) each user's first event row
    if by_position:  # sequence p * B_u + u: query position p of user u's candidates
        n = user_index.numel()
        first = F.pad(torch.cumsum(counts, 0), (1, 0))[:-1]  # (B_u,) each user's first candidate
        rows = (torch.arange(n_queries, device=valid.device)[:, None] * n + first).flatten()
        cu_q, starts, used, max_q = torch.cat([rows, rows.new_full((1,), n_queries * n)]), \
            starts.repeat(n_queries), lens.repeat(n_queries), most
    else:  # sequence u: all of user u's candidates' queries
        cu_q, used, max_q = F.pad(torch.cumsum(counts * n_queries, 0), (1, 0)), lens, most * n_queries
    return DecodePlan(
        cu_q=cu_q.int(), cu_k=torch.cat([starts, starts.new_full((1,), b_u * s)]).int(), used_k=used.int(),
        lens=lens.int(), user_index=user_index, n_queries=n_queries, by_position=by_position,
        max_q=max_q, max_k=s,
    )


def decode_rows(q: Tensor, k: Tensor, v: Tensor, null_kv: Tensor, plan: DecodePlan, n_heads: int) -> Tensor:
    """softmax([q K^T, q k_null] / sqrt(d)) [V; v_null] per head, for query rows q (N_q * N, D) in the
    plan's order; k, v (B_u, S, D) (unit last stride, rows of one user contiguous); null_kv (2, D)
    -> (N_q * N, D) position-major (row p * N + n), whatever the plan's order."""
    from ugsep.group_kernels import merge_null_slot  # imports Triton: CUDA only

    rows, d = q.shape
    hd = d // n_heads
    qh = q.view(rows, n_heads, hd)
    out, lse = torch.ops.aten._flash_attention_forward(
        qh, k.reshape(-1, n_heads, hd), v.reshape(-1, n_heads, hd), plan.cu_q, plan.cu_k, plan.max_q, plan.max_k,
        0.0, False, False, seqused_k=plan.used_k)[:2]
    lse = lse.view(n_heads, -1)  # (H, >= rows): log-sum-exp of the scaled event scores
    return merge_null_slot(out, lse, qh, null_kv, plan.user_index, plan.lens, plan.n_queries, plan.by_position)


def varlen_decode(q: Tensor, k: Tensor, v: Tensor, null_kv: Tensor, plan: DecodePlan, n_heads: int) -> Tensor:
    """``decode_rows`` for queries laid out per candidate: q (N, N_q, D) with N sorted by user -> (N, N_q, D)."""
    n, nq, d = q.shape
    rows = q.transpose(0, 1).reshape(-1, d) if plan.by_position else q.reshape(-1, d)
    return decode_rows(rows, k, v, null_kv, plan, n_heads).view(nq, n, d).transpose(0, 1)
