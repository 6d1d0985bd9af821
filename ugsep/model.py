"""The ranking model: tokenizers -> TokenMixer blocks -> head, with a split inference API.

``arch="rankmixer"`` is the plain baseline: every candidate carries all T tokens.
``arch="ugsep"`` masks the mixing (see ``ugsep.mixer``) so user tokens depend on the user
alone; ``encode_users`` then runs them once per user and ``score_groups`` scores any number
of candidates per user from that state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ugsep.features import FeatureSpec, at_least, check_fields, one_of
from ugsep.fused_groups import score_groups_fused
from ugsep.head import Head
from ugsep.kernels import Backend, resolve_backend
from ugsep.mixer import TokenMixerBlock
from ugsep.state import StateLayout, UserState
from ugsep.tokenizer import Tokenizer

ARCHS = ("rankmixer", "ugsep")
POOLS = ("group", "all")


@dataclass
class ModelConfig:
    """Every field is checked against its type (exactly: a bool is not an int) and the range its
    metadata declares (``ugsep.features.check_fields``); errors name the field."""

    arch: str = one_of(ARCHS, "ugsep")  # "rankmixer" (baseline) or "ugsep" (separated)
    d_model: int = at_least(1, 64)  # token width D; must be divisible by T = n_user_tokens + n_group_tokens
    n_user_tokens: int = at_least(1, 4)  # T_u; the paper's main setting is U:G = 1:1
    n_group_tokens: int = at_least(1, 4)  # T_g
    n_layers: int = at_least(1, 2)  # RankMixer's 100M/1B configs use 2
    ffn_mult: int = at_least(1, 4)  # per-token FFN expansion k
    compensation: bool = True  # information compensation (ugsep only)
    comp_rank: int = at_least(0, 0)  # rank of the compensation map; 0 means d_model
    pool: str = one_of(POOLS, "group")  # head pools "group" tokens or "all" tokens
    head_hidden: int = at_least(1, 64)  # hidden width of the head MLP

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, arch and pool among them, before any arithmetic
        t = self.n_user_tokens + self.n_group_tokens
        if self.d_model % t:
            raise ValueError(f"d_model={self.d_model} must be divisible by T={t} (mixing heads)")

    @property
    def n_tokens(self) -> int:
        return self.n_user_tokens + self.n_group_tokens

    @property
    def uses_compensation(self) -> bool:
        return self.arch == "ugsep" and self.compensation

    def to_dict(self) -> dict:
        return asdict(self)


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
            TokenMixerBlock(tu, tg, d, cfg.ffn_mult, cfg.arch == "ugsep", rank)
            for _ in range(cfg.n_layers)
        )
        self.head = Head(d, cfg.head_hidden, cfg.pool, cfg.n_tokens)
        self.use_kernels(Backend.AUTO)

    # --- full forward: the reference ---
    def forward(self, users: dict[str, Tensor], items: dict[str, Tensor], user_index: Tensor) -> Tensor:
        """Logits (N,) for N candidates; ``user_index[n]`` is candidate n's row in ``users``."""
        u = self.user_tokenizer(users)[user_index]  # (N, T_u, D)
        x = torch.cat([u, self.item_tokenizer(items)], dim=1)  # (N, T, D)
        for blk in self.blocks:
            x = blk(x)
        tu = self.cfg.n_user_tokens
        return self.head(x[:, tu:], self.head.user_sum(x[:, :tu]))

    # --- split inference ---
    @property
    def state_layout(self) -> StateLayout:
        c = self.cfg
        return StateLayout(
            c.n_layers, c.n_user_tokens, c.n_group_tokens, c.d_model,
            has_comp=c.uses_compensation, has_pooled=c.pool == "all",
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
        return self.head(g, None if state.pooled is None else state.pooled[user_index])

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
        head = self.head.flops()
        per_user_share = 1.0 / candidates_per_user if c.arch == "ugsep" else 1.0
        return user * per_user_share + item + head
