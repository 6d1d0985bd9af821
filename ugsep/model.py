"""The ranking model: tokenizers -> TokenMixer blocks -> head, with a split inference API.

``arch="rankmixer"`` is the plain baseline: every candidate carries all T tokens.
``arch="ugsep"`` masks the mixing (see ``ugsep.mixer``) so user tokens depend on the user
alone; ``encode_users`` then runs them once per user and ``score_groups`` scores any number
of candidates per user from that state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.config import ARCHS, POOLS, ModelConfig  # noqa: F401  (ModelConfig is part of this module's API)
from ugsep.features import FeatureSpec
from ugsep.fm import SideFM, fm_logit
from ugsep.fused_groups import score_groups_fused
from ugsep.head import Head
from ugsep.kernels import Backend, resolve_backend
from ugsep.mixer import TokenMixerBlock
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
            TokenMixerBlock(tu, tg, d, cfg.ffn_mult, cfg.arch == "ugsep", rank, cfg.dropout)
            for _ in range(cfg.n_layers)
        )
        self.head = Head(d, cfg.head_hidden, cfg.pool, cfg.n_tokens, cfg.dropout)
        self.user_fm = SideFM(spec.user_fields, cfg.fm_dim) if cfg.fm_dim else None
        self.item_fm = SideFM(spec.candidate_fields, cfg.fm_dim) if cfg.fm_dim else None
        self.use_kernels(Backend.AUTO)

    # --- full forward: the reference ---
    def forward(self, users: dict[str, Tensor], items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        """Logits (N,) for N candidates; ``user_index[n]`` is candidate n's row in ``users``."""
        u = self.user_tokenizer(users)[user_index]  # (N, T_u, D)
        x = torch.cat([u, self.item_tokenizer(items)], dim=1)  # (N, T, D)
        for blk in self.blocks:
            x = blk(x)
        tu = self.cfg.n_user_tokens
        user_fm = self.user_fm(users)[user_index] if self.user_fm is not None else None
        return self.output(x[:, tu:], self.head.user_sum(x[:, :tu]), user_fm, items)

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
            c.n_layers, c.n_user_tokens, c.n_group_tokens, c.d_model,
            has_comp=c.uses_compensation, has_pooled=c.pool == "all", fm_width=c.fm_dim + 1 if c.fm_dim else 0,
        )

    def encode_users(self, users: dict[str, Tensor]) -> UserState:
        """Run the user tokens through every layer once per user; keep what groups read."""
        self._require_split()
        u = self.user_tokenizer(users)  # (B_u, T_u, D)
        heads, comps = [], []
        for blk in self.blocks:
            u, read, comp = blk.user_step(u)
            heads.append(read)
            comps.append(comp)
        return UserState(
            heads=torch.stack(heads, dim=1),  # (B_u, L, T_u, T_g, d)
            comp=torch.stack(comps, dim=1) if self.cfg.uses_compensation else None,
            pooled=self.head.user_sum(u),
            fm=self.user_fm(users) if self.user_fm is not None else None,  # (B_u, k + 1)
        )

    def score_groups(self, state: UserState, items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        """Logits (N,) for N candidates from precomputed user state; no user-token work.

        With Triton kernels (``use_kernels``) and autograd off, the item side runs fused
        (``ugsep.fused_groups``, which has no backward); otherwise as written here.
        """
        self._require_split()
        if self.kernels is Backend.TRITON and not torch.is_grad_enabled():
            return score_groups_fused(self, state, items, user_index)
        g = self.item_tokenizer(items)  # (N, T_g, D)
        heads = state.heads[user_index]  # (N, L, T_u, T_g, d)
        comp = state.comp[user_index] if state.comp is not None else None
        for i, blk in enumerate(self.blocks):
            g = blk.group_step(g, heads[:, i], None if comp is None else comp[:, i])
        return self.output(g, *state.per_candidate(user_index), items)

    def score(self, users: dict[str, Tensor], items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        """The fastest exact path: split for ugsep, full forward for rankmixer."""
        if self.cfg.arch == "ugsep":
            return self.score_groups(self.encode_users(users), items, user_index)
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
        if self.cfg.arch != "ugsep":
            raise SplitInferenceError(
                f"arch={self.cfg.arch!r} mixes user and item tokens in every layer, so there is "
                "no user-only state to reuse; use model(users, items, user_index) or arch='ugsep'"
            )

    # --- accounting ---
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_candidate(self, candidates_per_user: float = 1.0) -> float:
        """Matmul FLOPs per scored candidate; user-side work is amortised over a user's
        candidates under ugsep and repeated per candidate under rankmixer."""
        c = self.cfg
        ffn = self.blocks[0].ffn.flops_per_token()
        comp = sum(b.comp.flops() for b in self.blocks if b.comp is not None)
        user = self.user_tokenizer.flops() + c.n_layers * c.n_user_tokens * ffn + comp
        item = self.item_tokenizer.flops() + c.n_layers * c.n_group_tokens * ffn
        head = self.head.flops() + (2 * self.cfg.fm_dim if self.cfg.fm_dim else 0)
        per_user_share = 1.0 / candidates_per_user if c.arch == "ugsep" else 1.0
        return user * per_user_share + item + head
