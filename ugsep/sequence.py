"""HyFormer's sequence side (arXiv 2601.12681), split for UG-Sep: everything that reads the user's
behaviour sequence alone is computed once per user.

Per layer l of HyFormer, with the sequence S (B, L, D) of a user and the query tokens Q:
    H_l = Enc_l(H_{l-1})                          sequence encoding (H_0 = embedded events)
    K_l, V_l = H_l W_k, H_l W_v                   (+ one learned "null" slot, see below)
    Q_l' = LN(Q_l + MHA(Q_l, K_l, V_l))           query decoding, padding masked
    [Q_{l+1}, F_{l+1}] = Boost([Q_l', F_l])       RankMixer token mixing + per-token FFN (ugsep.mixer)
The first layer's queries come from N small FFNs over GI = concat(non-sequence tokens, MeanPool(S)).

UG-Sep composition (the paper has no serving design; these are our choices):
- H_l, K_l, V_l and MeanPool(S) read the sequence alone: once per user, kept in the user state.
- Queries are of two kinds. *User queries* are generated from the user tokens and the pooled
  sequence only and sit at user positions of the boosting block, whose UG-Sep mask keeps them
  user-only: decoded and boosted once per user. *Candidate queries* are generated from all
  non-sequence tokens (the candidate is in GI, as in the paper) and sit at group positions.
- A candidate query's first linear is split: its user part (user tokens and pooled sequence)
  is computed once per user and stored (``pre``, N_g x hidden); the candidate adds its own part.
- Decoding for candidates runs per user (``grouped_attention``): a user's candidates' queries
  form one query sequence over that user's cached K/V, so K/V are never copied per candidate.
- A learned null key/value slot is always attendable, so a user without events (all padding)
  decodes to finite values (the slot's value) instead of an all-masked softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ugsep.collective_kv import CollectiveKV
from ugsep.features import PAD_ID, Field, FieldKind
from ugsep.layers import PerTokenLinear
from ugsep.tokenizer import _dense, embed_ids

ENCODERS = ("swiglu", "attention")


class SequenceEmbedder(nn.Module):
    """Sequence fields (each (B, L)) -> events (B, L, D) and the valid mask (B, L).

    Each event concatenates its fields' embeddings (a field with ``shares`` looks up the named
    candidate field's table: one embedding per item id, whether candidate or past event) and
    dense values on the signed-log scale, then one linear map to D plus a position embedding
    (positions count from the oldest slot; the most recent event is always at L - 1)."""

    def __init__(self, fields: tuple[Field, ...], d_model: int, shared) -> None:
        super().__init__()
        self.plan = tuple((f.name, f.kind, f.buckets, f.shares) for f in fields)
        self.tables = nn.ModuleDict({f.name: nn.Embedding(f.buckets, f.dim) for f in fields
                                     if f.kind != FieldKind.DENSE and not f.shares})
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=0.05)
        self.shared = shared  # name -> table, looked up at call time (owned by the candidate tokenizer)
        width = sum(f.dim if f.kind != FieldKind.DENSE else 1 for f in fields)
        self.proj = nn.Linear(width, d_model)
        self.pos = nn.Parameter(torch.zeros(fields[0].max_len, d_model))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        valid = batch[self.plan[0][0]] != PAD_ID  # (B, L): the event id field marks padding
        parts = []
        for name, kind, buckets, shares in self.plan:
            x = batch[name]
            if kind == FieldKind.DENSE:
                parts.append(_dense(x).unsqueeze(-1))
            else:
                table = self.shared[shares] if shares else self.tables[name]
                parts.append(embed_ids(table, kind, buckets, torch.where(valid, x, 0)))
        e = self.proj(torch.cat(parts, dim=-1)) + self.pos  # (B, L, D)
        return e * valid.unsqueeze(-1), valid


def mean_pool(events: Tensor, valid: Tensor) -> Tensor:
    """(B, L, D), (B, L) -> (B, D): the mean over valid events, 0 for an empty sequence."""
    return events.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)


class SwiGLU(nn.Module):
    """W2 (SiLU(W1 x) * W3 x), the same weights at every position."""

    def __init__(self, d_model: int, mult: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * mult * d_model)
        self.down = nn.Linear(mult * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SequenceEncoder(nn.Module):
    """One layer's Enc_l: ``swiglu`` (attention-free, per position) or ``attention`` (causal
    self-attention, then SwiGLU), post-norm residuals as in the token mixer."""

    def __init__(self, kind: str, d_model: int, n_heads: int, mult: int) -> None:
        super().__init__()
        self.kind, self.n_heads = kind, n_heads
        self.ffn, self.norm = SwiGLU(d_model, mult), nn.LayerNorm(d_model)
        if kind == "attention":
            self.qkv, self.out, self.attn_norm = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model), \
                nn.LayerNorm(d_model)

    def forward(self, h: Tensor, valid: Tensor) -> Tensor:
        if self.kind == "attention":
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            pos = torch.arange(h.shape[1], device=h.device)
            mask = (pos[None, :, None] >= pos[None, None, :]) & valid[:, None, :]  # causal, valid keys
            mask = mask | torch.eye(h.shape[1], dtype=torch.bool, device=h.device)  # a padded slot sees itself
            h = self.attn_norm(h + self.out(attention(q, k, v, mask.unsqueeze(1), self.n_heads)))
        return self.norm(h + self.ffn(h)) * valid.unsqueeze(-1)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, n_heads: int) -> Tensor:
    """Multi-head scaled dot-product attention: q (B, Q, D), k/v (B, S, D), mask broadcastable to
    (B, heads, Q, S) (True: attend) -> (B, Q, D). The one kernel of every path."""
    b, nq, d = q.shape

    def heads(x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], n_heads, d // n_heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, nq, d)


class QueryDecoder(nn.Module):
    """Q' = LN(Q + W_o MHA(W_q Q, K, V)) with K, V from this layer's H and a null slot.

    K, V are a projection of H, or with ``collective`` (``ugsep.collective_kv``) a shared pool
    row plus a few user-specific dimensions per position."""

    def __init__(self, d_model: int, n_heads: int, collective: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.kv = nn.Linear(d_model, 2 * d_model) if collective is None else None
        self.ckv = CollectiveKV(d_model, *collective) if collective is not None else None
        self.null_kv = nn.Parameter(torch.zeros(2, d_model))
        self.q, self.out, self.norm = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model), nn.LayerNorm(d_model)

    def keys_values(self, h: Tensor, valid: Tensor) -> Tensor:
        """(B, L, D), (B, L) -> (B, 2, L, D): K_l and V_l of a sequence (with CollectiveKV in
        training, the pool rows are gated)."""
        if self.ckv is None:
            return self.kv(h).unflatten(-1, (2, -1)).transpose(1, 2)
        return self.ckv.expand(*self.ckv.compress(h, valid))

    def _with_null(self, kv: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = kv.shape[0]
        null = self.null_kv.unsqueeze(1).expand(b, 2, 1, -1).to(kv.dtype)  # (B, 2, 1, D)
        kv = torch.cat([null, kv], dim=2)
        mask = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # (B, L + 1)
        return kv[:, 0], kv[:, 1], mask

    def forward(self, q: Tensor, kv: Tensor, valid: Tensor) -> Tensor:
        """q (B, N, D) decodes over its own row's kv (B, 2, L, D) -> (B, N, D)."""
        k, v, mask = self._with_null(kv, valid)
        return self.norm(q + self.out(attention(self.q(q), k, v, mask[:, None, None, :], self.n_heads)))

    def grouped(self, q: Tensor, kv: Tensor, valid: Tensor, buckets: list[UserBucket]) -> Tensor:
        """q (N, N_g, D) of N candidates decodes over its user's kv (B_u, 2, L, D) -> (N, N_g, D);
        ``buckets``: ``user_buckets`` of the candidates' user index."""
        k, v, mask = self._with_null(kv, valid)
        att = grouped_attention(self.q(q), k, v, mask, buckets, self.n_heads)
        return self.norm(q + self.out(att))


@dataclass(frozen=True)
class UserBucket:
    """Users with a similar candidate count, padded to ``width`` query slots each."""

    candidates: Tensor  # (n,) candidate rows of this bucket, grouped by user
    row: Tensor  # (n,) each candidate's user row inside the bucket
    slot: Tensor  # (n,) each candidate's position among its user's candidates
    users: Tensor  # (U_b,) the bucket's users (rows of the user state)
    width: int


def user_buckets(user_index: Tensor) -> list[UserBucket]:
    """Group N candidates by user for ``grouped_attention``: users bucketed by candidate count
    (powers of two: counts in (2^(b-1), 2^b]) and padded within a bucket, so at most 2x padded
    query rows and one attention call per bucket. It depends on ``user_index`` alone: computed
    once per ``score_groups`` call and shared by every layer."""
    if user_index.numel() == 0:
        return []
    order = torch.argsort(user_index, stable=True)
    users, counts = torch.unique_consecutive(user_index[order], return_counts=True)
    rank = torch.arange(len(order), device=user_index.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    bucket = torch.ceil(torch.log2(counts.double())).long()
    cand_bucket = torch.repeat_interleave(bucket, counts)  # per sorted candidate
    out = []
    for b in torch.unique(bucket).tolist():
        in_b, pick = bucket == b, cand_bucket == b
        slot = torch.cumsum(in_b, 0) - 1  # row of each user inside this bucket
        out.append(UserBucket(order[pick], torch.repeat_interleave(slot[in_b], counts[in_b]), rank[pick],
                              users[in_b], 2**b))
    return out


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, buckets: list[UserBucket],
                      n_heads: int) -> Tensor:
    """Candidates' queries q (N, Q, D) attend over their user's k, v (B_u, S, D) -> (N, Q, D).

    The candidates of one user are laid out as that user's query sequence (like requests sharing
    a prefix's KV cache), so each user's K/V is read once per call, never copied per candidate:
    one attention call per bucket of ``user_buckets``."""
    _, nq, d = q.shape
    out = torch.empty_like(q)
    for bk in buckets:
        padded = q.new_zeros(len(bk.users), bk.width, nq, d)
        padded[bk.row, bk.slot] = q[bk.candidates]
        got = attention(padded.view(len(bk.users), bk.width * nq, d), k[bk.users], v[bk.users],
                        key_mask[bk.users][:, None, None, :], n_heads)
        out[bk.candidates] = got.view(len(bk.users), bk.width, nq, d)[bk.row, bk.slot]
    return out


class QueryGenerator(nn.Module):
    """N small FFNs over GI: query i = W2_i GELU(W1_i GI + b1_i) + b2_i, one PerTokenLinear per
    layer of weights (N positions). ``n_user_in`` columns of GI are user-side (user tokens and
    the pooled sequence): ``user_part`` applies W1 to those alone, once per user."""

    def __init__(self, n_queries: int, d_in: int, n_user_in: int, d_model: int) -> None:
        super().__init__()
        self.n, self.n_user_in = n_queries, n_user_in
        self.fc1 = PerTokenLinear(n_queries, d_in, d_model)
        self.fc2 = PerTokenLinear(n_queries, d_model, d_model)

    def user_part(self, gi_user: Tensor) -> Tensor:
        """(B, n_user_in) -> (B, N, hidden): W1's user columns applied, bias included."""
        w = self.fc1.weight[:, : self.n_user_in]  # (N, n_user_in, hidden)
        return torch.einsum("bk,nkh->bnh", gi_user, w) + self.fc1.bias

    def finish(self, pre: Tensor, gi_item: Tensor | None = None) -> Tensor:
        """pre (B, N, hidden) [+ W1's item columns on gi_item (B, d_in - n_user_in)] -> (B, N, D)."""
        if gi_item is not None:
            pre = pre + torch.einsum("bk,nkh->bnh", gi_item, self.fc1.weight[:, self.n_user_in :])
        return self.fc2(F.gelu(pre))


class SequenceSide(nn.Module):
    """HyFormer's sequence modules beside the token mixer: the event embedder, one encoder and one
    decoder per layer, and the two query generators (GI = user tokens, pooled sequence [, group tokens])."""

    def __init__(self, fields: tuple[Field, ...], n_layers: int, d_model: int, n_user_tokens: int,
                 n_group_tokens: int, n_user_queries: int, n_group_queries: int, encoder: str, n_heads: int,
                 ffn_mult: int, shared: nn.ModuleDict, collective: tuple[int, int] | None = None) -> None:
        super().__init__()
        if not fields:
            raise ValueError("arch='hyformer' reads behaviour sequences: the feature spec has no sequence_fields")
        self.embed = SequenceEmbedder(fields, d_model, _SharedTables(shared))  # owned by the candidate tokenizer
        self.encoders = nn.ModuleList(SequenceEncoder(encoder, d_model, n_heads, ffn_mult) for _ in range(n_layers))
        self.decoders = nn.ModuleList(QueryDecoder(d_model, n_heads, collective) for _ in range(n_layers))
        gi_user = (n_user_tokens + 1) * d_model  # user tokens and the pooled sequence
        self.user_queries = QueryGenerator(n_user_queries, gi_user, gi_user, d_model)
        self.group_queries = QueryGenerator(n_group_queries, gi_user + n_group_tokens * d_model, gi_user, d_model)
        self.n_user_queries, self.n_group_queries = n_user_queries, n_group_queries
        d, attention = d_model, encoder == "attention"
        self._shapes = {  # matmul weights (multiply-adds per row) for ``flops``
            "d": d, "layers": n_layers, "embed": self.embed.proj.in_features * d,
            "encoder": 3 * ffn_mult * d * d + (4 * d * d if attention else 0), "self_attention": int(attention),
            "kv": self.decoders[0].ckv.flops_per_event() // 2 if collective else 2 * d * d,
            "user_queries": n_user_queries * (gi_user * d + d * d),
            "group_queries_user": n_group_queries * gi_user * d,
            "group_queries_item": n_group_queries * (n_group_tokens * d * d + d * d),
        }

    def flops(self, seq_len: int) -> tuple[float, float]:
        """(user side, per candidate) matmul FLOPs of the sequence modules for ``seq_len`` events,
        from the layer shapes fixed at construction (quantized layers keep their weights as buffers)."""
        z, s, d = self._shapes, seq_len, self._shapes["d"]
        decode = 2 * 2 * d * d + 2 * 2 * (s + 1) * d  # q and out projections, QK^T and AV over s + 1 slots
        per_layer = 2 * s * (z["encoder"] + z["kv"]) + z["self_attention"] * 2 * 2 * s * s * d
        user = 2 * s * z["embed"] + z["layers"] * (per_layer + self.n_user_queries * decode)
        user += 2 * z["user_queries"] + 2 * z["group_queries_user"]
        item = 2 * z["group_queries_item"] + z["layers"] * self.n_group_queries * decode
        return float(user), float(item)

    def user_inputs(self, users: dict[str, Tensor], user_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(events (B, L, D), valid (B, L), GI's user part (B, (T_u + 1) D))."""
        events, valid = self.embed(users)
        return events, valid, torch.cat([user_tokens.flatten(1), mean_pool(events, valid)], dim=1)


class _SharedTables:
    """Read access to another module's embedding tables by name. Not an nn.Module, so holding it
    does not register the tables a second time (one checkpoint key per table)."""

    def __init__(self, tables: nn.ModuleDict) -> None:
        self.tables = tables

    def __getitem__(self, name: str) -> nn.Embedding:
        return self.tables[name]
