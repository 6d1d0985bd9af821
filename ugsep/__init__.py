"""UG-Sep ranking models: a user side computed once per user, scored against many candidates.

    model, version = ugsep.load_checkpoint(path)
    state = model.encode_users(users)                 # once per user
    logits = model.score_groups(state, items, index)  # per candidate
    result = ugsep.train_model(spec, ugsep.ModelConfig(), data, ugsep.TrainConfig())  # early-stopped

Quantization lives in ``ugsep.quant``. The names below are imported on first use, so
``import ugsep.features`` (numpy only) stays light for Spark code; nothing imports Triton.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "Backend": "ugsep.kernels",
    "CheckpointError": "ugsep.checkpoint",
    "CheckpointInfo": "ugsep.checkpoint",
    "checkpoint_info": "ugsep.checkpoint",
    "load_checkpoint": "ugsep.checkpoint",
    "read_spec": "ugsep.checkpoint",
    "save_checkpoint": "ugsep.checkpoint",
    "verify_checkpoint": "ugsep.checkpoint",
    "DensePolicy": "ugsep.features",
    "FeatureSpec": "ugsep.features",
    "Field": "ugsep.features",
    "FieldKind": "ugsep.features",
    "ModelConfig": "ugsep.config",
    "TrainConfig": "ugsep.config",
    "TrainResult": "ugsep.train",
    "train_model": "ugsep.train",
    "fit": "ugsep.train",
    "RankingModel": "ugsep.model",
    "SplitInferenceError": "ugsep.model",
    "StateLayout": "ugsep.state",
    "UserState": "ugsep.state",
}

__all__ = [
    "Backend",
    "CheckpointError",
    "CheckpointInfo",
    "DensePolicy",
    "FeatureSpec",
    "Field",
    "FieldKind",
    "ModelConfig",
    "RankingModel",
    "SplitInferenceError",
    "StateLayout",
    "TrainConfig",
    "TrainResult",
    "UserState",
    "checkpoint_info",
    "fit",
    "load_checkpoint",
    "read_spec",
    "save_checkpoint",
    "train_model",
    "verify_checkpoint",
]

if TYPE_CHECKING:
    from ugsep.checkpoint import (
        CheckpointError,
        CheckpointInfo,
        checkpoint_info,
        load_checkpoint,
        read_spec,
        save_checkpoint,
        verify_checkpoint,
    )
    from ugsep.config import ModelConfig, TrainConfig
    from ugsep.features import DensePolicy, FeatureSpec, Field, FieldKind
    from ugsep.kernels import Backend
    from ugsep.model import RankingModel, SplitInferenceError
    from ugsep.state import StateLayout, UserState
    from ugsep.train import TrainResult, fit, train_model


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ugsep' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
