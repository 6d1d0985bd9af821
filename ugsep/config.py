"""The model's and the trainer's settings: one dataclass each, torch-free (the CLI reads their
defaults for its help without importing torch). Every field is checked against its type and the
range its metadata declares (``ugsep.features.check_fields``); errors name the field."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ugsep.features import at_least, check_fields, one_of

ARCHS = ("rankmixer", "ugsep", "hyformer")
SEQ_ENCODERS = ("swiglu", "attention")
COLLECTIVE_KEYS = ("kv_pool_size", "kv_user_dim")
HYFORMER_KEYS = ("n_user_queries", "n_group_queries", "seq_encoder", "n_heads", "collective_kv", *COLLECTIVE_KEYS)
POOLS = ("group", "all")


@dataclass
class ModelConfig:
    """Every field is checked against its type (exactly: a bool is not an int) and the range its
    metadata declares (``ugsep.features.check_fields``); errors name the field."""

    arch: str = one_of(ARCHS, "ugsep")  # "rankmixer" (baseline), "ugsep" (separated), "hyformer" (+ sequences)
    d_model: int = at_least(1, 64)  # token width D; must be divisible by T = n_user_tokens + n_group_tokens
    n_user_tokens: int = at_least(1, 4)  # T_u; the paper's main setting is U:G = 1:1
    n_group_tokens: int = at_least(1, 4)  # T_g
    n_layers: int = at_least(1, 2)  # RankMixer's 100M/1B configs use 2
    ffn_mult: int = at_least(1, 4)  # per-token FFN expansion k
    compensation: bool = True  # information compensation (ugsep only)
    comp_rank: int = at_least(0, 0)  # rank of the compensation map; 0 means d_model
    pool: str = one_of(POOLS, "all")  # head pools "group" tokens or "all" tokens (validation: "all", see below)
    head_hidden: int = at_least(1, 64)  # hidden width of the head MLP
    dropout: float = at_least(0.0, 0.0)  # on the FFN and head hidden activations, training only
    fm_dim: int = at_least(0, 16)  # factor width of the FM interaction added to the logit (ugsep.fm); 0: none
    # hyformer only (ugsep.sequence): query tokens, the sequence encoder, decoding heads
    n_user_queries: int = at_least(1, 4)  # queries from user-only inputs: user positions, once per user
    n_group_queries: int = at_least(1, 4)  # queries that read the candidate: group positions (T = 16 by default)
    seq_encoder: str = one_of(SEQ_ENCODERS, "swiglu")  # per-position SwiGLU or causal self-attention
    n_heads: int = at_least(1, 4)  # heads of query decoding (and of the attention encoder)
    collective_kv: bool = False  # sequence K/V as a shared pool row + user dims (ugsep.collective_kv)
    kv_pool_size: int = at_least(1, 10_000)  # CollectiveKV: rows of each of the K and V pools
    kv_user_dim: int = at_least(1, 4)  # CollectiveKV: user-specific dimensions of each K and V

    # Keys added after checkpoints were first written: absent from a saved config, a key means
    # this value, the behaviour before it existed (not the current default, the training recipe).
    ABSENT_MEANS: ClassVar[dict[str, Any]] = {"dropout": 0.0, "fm_dim": 0, "collective_kv": False}

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, arch and pool among them, before any arithmetic
        t = self.n_tokens
        if self.d_model % t:
            raise ValueError(f"d_model={self.d_model} must be divisible by T={t} (mixing heads)"
                             + (" (hyformer: T counts the query tokens)" if self.arch == "hyformer" else ""))
        if self.arch == "hyformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.collective_kv and (self.arch != "hyformer" or self.kv_user_dim >= self.d_model):
            raise ValueError("collective_kv compresses hyformer's sequence K/V: it needs arch='hyformer' and "
                             f"kv_user_dim < d_model (got arch={self.arch!r}, kv_user_dim={self.kv_user_dim})")

    @property
    def n_user_positions(self) -> int:
        """Token positions that are user-only: user tokens, and hyformer's user queries first."""
        return self.n_user_tokens + (self.n_user_queries if self.arch == "hyformer" else 0)

    @property
    def n_group_positions(self) -> int:
        return self.n_group_tokens + (self.n_group_queries if self.arch == "hyformer" else 0)

    @property
    def n_tokens(self) -> int:
        return self.n_user_positions + self.n_group_positions

    @property
    def separated(self) -> bool:
        """Whether the user positions are user-only (the UG-Sep mask): ugsep and hyformer."""
        return self.arch != "rankmixer"

    @property
    def uses_compensation(self) -> bool:
        return self.separated and self.compensation

    def to_dict(self) -> dict:
        """The saved form: keys at their ``ABSENT_MEANS`` value and, outside hyformer, the
        hyformer keys are left out (the CollectiveKV sizes without CollectiveKV), so an older
        model's config (and model_version) is unchanged."""
        absent = self.ABSENT_MEANS
        d = {k: v for k, v in asdict(self).items() if k not in absent or v != absent[k]}
        unused = (() if self.arch == "hyformer" else HYFORMER_KEYS) + (() if self.collective_kv else COLLECTIVE_KEYS)
        return {k: v for k, v in d.items() if k not in unused}


MONITORS = ("logloss", "auc")
BATCHINGS = ("rows", "users")


@dataclass
class TrainConfig:
    """How to train; every field is checked (``check_fields``), errors name the field."""

    max_epochs: int = at_least(1, 20)  # an upper bound: early stopping picks the epoch
    patience: int = at_least(1, 2)  # evaluations without improvement before stopping
    monitor: str = one_of(MONITORS, "logloss")  # what "best" means on the validation split
    val_share: float = 0.1  # each user's last share of the training period, by time
    eval_every: int = at_least(0, 0)  # steps between evaluations inside an epoch; 0: at epoch ends
    batch_size: int = at_least(1, 512)  # candidates per step
    batching: str = one_of(BATCHINGS, "rows")  # i.i.d. rows, or whole users per step (ugsep.train.epoch_batches)
    lr: float = at_least(0.0, 2e-3)  # peak learning rate of the dense weights (AdamW)
    embedding_lr: float = at_least(0.0, 0.0)  # of the embedding tables; 0: the same as lr
    weight_decay: float = at_least(0.0, 0.5)  # decoupled, on weight matrices only (no biases, norms, embeddings)
    embedding_decay: float = at_least(0.0, 0.0)  # decoupled decay of the embedding tables
    warmup_steps: int = at_least(0, 100)  # linear warm-up from 0 to lr
    lr_decay: float = 1.0  # learning rate multiplied by this per epoch (smoothly, per step)
    grad_clip: float = at_least(0.0, 1.0)  # max global gradient norm; 0: no clipping
    aux_loss_weight: float = at_least(0.0, 0.01)  # CollectiveKV's peak + balance losses, added to the log loss
    seed: int = 0  # model init, batch order and dropout

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 < self.val_share < 1:
            raise ValueError(f"TrainConfig: val_share = {self.val_share} is not between 0 and 1")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"TrainConfig: lr_decay = {self.lr_decay} is not in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


