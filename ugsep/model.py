"""The ranking model: tokenizers -> TokenMixer blocks -> head, with a split inference API.

``arch="rankmixer"`` is the plain baseline: every candidate carries all T tokens.
``arch="ugsep"`` masks the mixing (see ``ugsep.mixer``) so user tokens depend on the user
alone; ``encode_users`` then runs them once per user and ``score_groups`` scores any number
of candidates per user from that state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ugsep.config import ARCHS, POOLS, ModelConfig  # noqa: F401  (ModelConfig is part of this module's API)
from ugsep.features import FeatureSpec
from ugsep.fm import SideFM, fm_logit
from ugsep.fused_groups import score_groups_fused
from ugsep.head import Head
from ugsep.kernels import Backend, resolve_backend
from ugsep.mixer import TokenMixerBlock
from ugsep.sequence import SequenceSide, user_buckets
from ugsep.state import StateLayout, UserState
from ugsep.tokenizer import Tokenizer


class SplitInferenceError(RuntimeError):
    """Raised when the split API is used on a model whose user side is not separated."""


class RankingModel(nn.Module):
    """tokenizers -> TokenMixer blocks -> head.

    Kernels: ``use_kernels`` picks Triton (CUDA: fused item side, W8A16 kernel) or torch ops
    once; ``backend`` is what was asked for, ``kernels`` what runs. AUTO is resolved again
    whenever the model moves (``.to``/``.cuda``/``.cpu``), so a model loaded on the CPU and then
    moved to a GPU runs the Triton kernels there.
    """

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        d, tu, tg = cfg.d_model, cfg.n_user_tokens, cfg.n_group_tokens
        self.user_tokenizer = Tokenizer(spec.user_fields, tu, d, spec.dense_policy)
        self.item_tokenizer = Tokenizer(spec.candidate_fields, tg, d, spec.dense_policy)
        rank = (cfg.comp_rank or d) if cfg.uses_compensation else 0
        self.blocks = nn.ModuleList(
            TokenMixerBlock(cfg.n_user_positions, cfg.n_group_positions, d, cfg.ffn_mult, cfg.separated, rank,
                            cfg.dropout)
            for _ in range(cfg.n_layers)
        )
        self.head = Head(d, cfg.head_hidden, cfg.pool, cfg.n_tokens, cfg.dropout)
        self.user_fm = SideFM(spec.user_fields, cfg.fm_dim) if cfg.fm_dim else None
        self.item_fm = SideFM(spec.candidate_fields, cfg.fm_dim) if cfg.fm_dim else None
        self.seq = SequenceSide(spec.sequence_fields, cfg.n_layers, d, tu, tg, cfg.n_user_queries,
                                cfg.n_group_queries, cfg.seq_encoder, cfg.n_heads, cfg.ffn_mult,
                                self.item_tokenizer.embed.tables,
                                (cfg.kv_pool_size, cfg.kv_user_dim) if cfg.collective_kv else None,
                                ) if cfg.arch == "hyformer" else None
        self.use_kernels(Backend.AUTO)

    # --- full forward: the reference ---
    def forward(self, users: dict[str, Tensor], items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        """Logits (N,) for N candidates; ``user_index[n]`` is candidate n's row in ``users``.
        Every candidate carries all T tokens (and, under hyformer, its own copy of the sequence)."""
        u = self.user_tokenizer(users)[user_index]  # (N, T_u, D)
        g = self.item_tokenizer(items)  # (N, T_g, D)
        if self.seq is None:
            x = torch.cat([u, g], dim=1)  # (N, T, D)
            for blk in self.blocks:
                x = blk(x)
        else:
            x = self._hyformer_full({k: v[user_index] for k, v in users.items()}, u, g)
        tu = self.cfg.n_user_positions
        user_fm = self.user_fm(users)[user_index] if self.user_fm is not None else None
        return self.output(x[:, tu:], self.head.user_sum(x[:, :tu]), user_fm, items)

    def _hyformer_full(self, users: dict[str, Tensor], u: Tensor, g: Tensor) -> Tensor:
        """HyFormer's layers with every input per candidate row: (N, T, D) final tokens."""
        seq, nu, ng = self.seq, self.cfg.n_user_queries, self.cfg.n_group_queries
        h, valid, gi_user = seq.user_inputs(users, u)
        xu = torch.cat([seq.user_queries.finish(seq.user_queries.user_part(gi_user)), u], dim=1)
        xg = torch.cat([seq.group_queries.finish(seq.group_queries.user_part(gi_user), g.flatten(1)), g], dim=1)
        for enc, dec, blk in zip(seq.encoders, seq.decoders, self.blocks, strict=True):
            h = enc(h, valid)  # H_l (N, L, D)
            kv = dec.keys_values(h, valid)  # (N, 2, L, D)
            xu = torch.cat([dec(xu[:, :nu], kv, valid), xu[:, nu:]], dim=1)
            xg = torch.cat([dec(xg[:, :ng], kv, valid), xg[:, ng:]], dim=1)
            x = blk(torch.cat([xu, xg], dim=1))  # boosting: the UG-Sep token mixer
            xu, xg = x[:, : xu.shape[1]], x[:, xu.shape[1] :]
        return torch.cat([xu, xg], dim=1)

    def output(self, group_tokens: Tensor, user_sum: Tensor | None, user_fm: Tensor | None,
               items: dict[str, Tensor], token_dim: int = 1) -> Tensor:
        """Logits (N,): the head over the final group tokens, plus the FM term where configured
        (``user_fm``: the user's FM part gathered per candidate)."""
        logit = self.head(group_tokens, user_sum, token_dim)
        return logit if self.item_fm is None else logit + fm_logit(user_fm, self.item_fm(items))

    # --- split inference ---
    @property
    def state_layout(self) -> StateLayout:
        c = self.cfg
        return StateLayout(
            c.n_layers, c.n_user_positions, c.n_group_positions, c.d_model,
            has_comp=c.uses_compensation, has_pooled=c.pool == "all", fm_width=c.fm_dim + 1 if c.fm_dim else 0,
            seq_len=self.spec.sequence_len if self.seq is not None else 0,
            n_group_queries=c.n_group_queries if self.seq is not None else 0,
            kv_user_dim=c.kv_user_dim if c.collective_kv else 0, kv_pool_size=c.kv_pool_size if c.collective_kv else 0,
        )

    def encode_users(self, users: dict[str, Tensor]) -> UserState:
        """Run the user positions through every layer once per user; keep what candidates read."""
        self._require_split()
        u = self.user_tokenizer(users)  # (B_u, T_u, D)
        kvs, compressed, valid, pre = [], [], None, None
        if self.seq is not None:  # hyformer: the sequence, its K/V and the user queries, once per user
            seq, nu = self.seq, self.cfg.n_user_queries
            h, valid, gi_user = seq.user_inputs(users, u)
            pre = seq.group_queries.user_part(gi_user)  # (B_u, N_g, D): candidate queries' user part
            u = torch.cat([seq.user_queries.finish(seq.user_queries.user_part(gi_user)), u], dim=1)
        heads, comps = [], []
        for i, blk in enumerate(self.blocks):
            if self.seq is not None:
                h, dec = self.seq.encoders[i](h, valid), self.seq.decoders[i]
                if dec.ckv is None or self.training:  # training keeps K/V expanded: the gate is training-only
                    kvs.append(dec.keys_values(h, valid))  # (B_u, 2, L, D)
                else:  # CollectiveKV: the state keeps the indices and user parts, K/V are rebuilt for decoding
                    compressed.append(dec.ckv.compress(h, valid)[:2])
                    kvs.append(dec.ckv.expand(*compressed[-1]))
                u = torch.cat([dec(u[:, :nu], kvs[-1], valid), u[:, nu:]], dim=1)
            u, read, comp = blk.user_step(u)
            heads.append(read)
            comps.append(comp)
        return UserState(
            heads=torch.stack(heads, dim=1),  # (B_u, L, T_u, T_g, d)
            comp=torch.stack(comps, dim=1) if self.cfg.uses_compensation else None,
            pooled=self.head.user_sum(u),
            fm=self.user_fm(users) if self.user_fm is not None else None,  # (B_u, k + 1)
            # (B_u, layers, 2, L, D), each layer's K and V a (B_u, L, D) slab in memory (varlen decoding reads them so)
            kv=torch.stack([kv.transpose(0, 1) for kv in kvs]).permute(2, 0, 1, 3, 4) if kvs and not compressed
            else None,
            kv_index=torch.stack([c[0] for c in compressed], dim=1) if compressed else None,  # (B_u, layers, 2, L)
            kv_user=torch.stack([c[1] for c in compressed], dim=1) if compressed else None,  # (.., L, d_user)
            valid=valid.to(u.dtype) if valid is not None else None,  # (B_u, L) 1 = event
            pre=pre,
        )

    def score_groups(self, state: UserState, items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        """Logits (N,) for N candidates from precomputed user state; no user-side work.

        With Triton kernels (``use_kernels``) and autograd off, the item side runs fused
        (``ugsep.fused_groups``, which has no backward; hyformer in bf16/fp16 only); otherwise as
        written here. Under
        hyformer each layer first decodes the candidates' queries over their user's cached K/V,
        one attention call per user bucket (``ugsep.sequence.grouped_attention``).
        """
        self._require_split()
        if self.kernels is Backend.TRITON and not torch.is_grad_enabled() and (
                self.seq is None or state.valid.dtype in (torch.bfloat16, torch.float16)):  # flash: half only
            return score_groups_fused(self, state, items, user_index)
        g = self.item_tokenizer(items)  # (N, T_g, D)
        if self.seq is not None:
            queries = self.seq.group_queries.finish(state.pre[user_index], g.flatten(1))  # (N, N_g, D)
            g, ng, valid = torch.cat([queries, g], dim=1), self.cfg.n_group_queries, state.valid > 0.5
            buckets = user_buckets(user_index)  # the candidates grouped by user, once for every layer
        heads = state.heads[user_index]  # (N, L, T_u, T_g, d)
        comp = state.comp[user_index] if state.comp is not None else None
        for i, blk in enumerate(self.blocks):
            if self.seq is not None:
                decoded = self.seq.decoders[i].grouped(g[:, :ng], self.layer_kv(state, i), valid, buckets)
                g = torch.cat([decoded, g[:, ng:]], dim=1)
            g = blk.group_step(g, heads[:, i], None if comp is None else comp[:, i])
        return self.output(g, *state.per_candidate(user_index), items)

    def layer_kv(self, state: UserState, layer: int) -> Tensor:
        """(B_u, 2, L, D): layer ``layer``'s sequence K/V from the state, rebuilt from the pool
        where CollectiveKV compressed them."""
        if state.kv is not None:
            return state.kv[:, layer]
        return self.seq.decoders[layer].ckv.expand(state.kv_index[:, layer], state.kv_user[:, layer])

    def auxiliary_loss(self) -> Tensor | float:
        """The training losses the last forward left beside the logits (CollectiveKV's routing
        losses, summed over layers), each read once; 0.0 when there are none."""
        losses = [d.ckv.aux_loss for d in (self.seq.decoders if self.seq is not None else ())
                  if d.ckv is not None and d.ckv.aux_loss is not None]
        for d in self.seq.decoders if losses else ():
            d.ckv.aux_loss = None
        return sum(losses) if losses else 0.0

    def score(self, users: dict[str, Tensor], items: dict[str, Tensor], user_index: Tensor,
              on_state: Callable[[UserState], None] | None = None) -> Tensor:
        """The fastest exact path: split for ugsep and hyformer, full forward for rankmixer.
        ``on_state``: called with the user state the split computes (rankmixer has none)."""
        if self.cfg.separated:
            state = self.encode_users(users)
            if on_state is not None:
                on_state(state)
            return self.score_groups(state, items, user_index)
        return self(users, items, user_index)

    # --- kernels ---
    def use_kernels(self, backend: Backend | str = Backend.AUTO) -> RankingModel:
        """Choose the kernels for every path and layer once. AUTO: Triton where the parameters
        are on CUDA and Triton imports, else torch ops; TRITON where it cannot run raises."""
        self.kernels = resolve_backend(backend, self._device())  # raises before changing anything
        self.backend = Backend(backend)
        for m in self.modules():
            if m is not self and hasattr(m, "use_kernels"):
                m.use_kernels(self.backend)  # quantized layers
        return self

    def _apply(self, fn, *args, **kwargs):
        """After a move or cast (``to``, ``cuda``, ``cpu``, ...), resolve the kernels for where
        the parameters now are (the quantized layers do the same for themselves)."""
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "backend"):  # not while __init__ is still building the model
            self.kernels = resolve_backend(self.backend, self._device())
        return self

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _require_split(self) -> None:
        if not self.cfg.separated:
            raise SplitInferenceError(
                f"arch={self.cfg.arch!r} mixes user and item tokens in every layer, so there is "
                "no user-only state to reuse; use model(users, items, user_index) or arch='ugsep'"
            )

    # --- accounting ---
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_candidate(self, candidates_per_user: float = 1.0) -> float:
        """Matmul FLOPs per scored candidate; user-side work is amortised over a user's
        candidates when the model is separated and repeated per candidate under rankmixer."""
        c = self.cfg
        ffn = self.blocks[0].ffn.flops_per_token()
        comp = sum(b.comp.flops() for b in self.blocks if b.comp is not None)
        user = self.user_tokenizer.flops() + c.n_layers * c.n_user_positions * ffn + comp
        item = self.item_tokenizer.flops() + c.n_layers * c.n_group_positions * ffn
        head = self.head.flops() + (2 * self.cfg.fm_dim if self.cfg.fm_dim else 0)
        if self.seq is not None:
            seq_user, seq_item = self.seq.flops(self.spec.sequence_len)
            user, item = user + seq_user, item + seq_item
        per_user_share = 1.0 / candidates_per_user if c.separated else 1.0
        return user * per_user_share + item + head
