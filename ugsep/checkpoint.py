"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (spec, config, version).

No pickle anywhere: a checkpoint can be loaded from an untrusted location. ``model_version``
hashes the config and the weights, so tables can refuse state written by another model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ugsep.features import FeatureSpec
from ugsep.model import ModelConfig, RankingModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "ugsep-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the model it claims to hold."""


def model_version(spec: FeatureSpec, cfg: ModelConfig, state: dict[str, torch.Tensor],
                  quant: dict[str, Any] | None = None) -> str:
    """'<arch>-<12 hex>' from the canonical config JSON and the raw weight bytes; a quantized
    model is '<base version>+<mode>-<8 hex>', so its lineage stays readable."""
    h = hashlib.sha256(json.dumps(_config_dict(spec, cfg, quant), sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if quant:
        return f"{quant['base_model_version']}+{quant['recipe']['mode']}-{h.hexdigest()[:8]}"
    return f"{cfg.arch}-{h.hexdigest()[:12]}"


def _config_dict(spec: FeatureSpec, cfg: ModelConfig, quant: dict[str, Any] | None = None) -> dict[str, Any]:
    d = {"feature_spec": spec.to_dict(), "model": cfg.to_dict()}
    if quant:
        d["quantization"] = quant
    return d


def save_checkpoint(
    model: RankingModel, out_dir: str | Path, extra: dict[str, Any] | None = None,
    quant: dict[str, Any] | None = None,
) -> str:
    """Write the checkpoint and return its model_version. ``quant`` ({"recipe": ...,
    "base_model_version": ...}) marks a model whose layers ``quantize_model`` swapped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    version = model_version(model.spec, model.cfg, state, quant)
    save_file(state, str(out / WEIGHTS))
    meta = {"format": FORMAT, "model_version": version, **_config_dict(model.spec, model.cfg, quant)}
    meta["extra"] = extra or {}
    (out / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return version


def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; is {ckpt_dir} a ugsep checkpoint?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_spec(ckpt_dir: str | Path) -> FeatureSpec:
    """The checkpoint's feature spec, from its config alone (no weights read)."""
    return _spec_and_config(ckpt_dir, read_config(ckpt_dir))[0]


def _spec_and_config(ckpt_dir: str | Path, meta: dict[str, Any]) -> tuple[FeatureSpec, ModelConfig]:
    try:
        return FeatureSpec.from_dict(meta["feature_spec"]), ModelConfig(**meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_dir}/{CONFIG}: invalid model config ({e})") from None


def load_checkpoint(ckpt_dir: str | Path, map_location: str = "cpu") -> tuple[RankingModel, str]:
    """Load and verify a checkpoint; returns (model in eval mode, model_version)."""
    meta = read_config(ckpt_dir)
    spec, cfg = _spec_and_config(ckpt_dir, meta)
    wpath = Path(ckpt_dir) / WEIGHTS
    try:
        state = load_file(str(wpath), device=map_location)
    except FileNotFoundError:
        raise CheckpointError(f"{wpath}: no such file") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath}: unreadable safetensors file ({e})") from None
    model = RankingModel(spec, cfg)
    quant = meta.get("quantization")
    if quant:
        from ugsep.quant.apply import quantize_model
        from ugsep.quant.recipe import QuantRecipe

        quantize_model(model, QuantRecipe(**quant["recipe"]))  # the structure; weights come next
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{wpath}: weights do not match the config ({e})") from None
    version = model_version(spec, cfg, state, quant)
    if version != meta.get("model_version"):
        raise CheckpointError(
            f"{ckpt_dir}: weights hash to {version} but config.json says "
            f"{meta.get('model_version')}; the checkpoint is corrupt or was edited"
        )
    return model.eval(), version
