"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (spec, config, version).

No pickle anywhere: a checkpoint can be loaded from an untrusted location. ``model_version``
hashes the config and the weights, so tables can refuse state written by another model.
``checkpoint_info`` reads the config alone and ``verify_checkpoint`` the weights without building
a model, for a driver that only plans and labels work.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ugsep.features import ConfigValueError, FeatureSpec, check_fields
from ugsep.kernels import Backend
from ugsep.model import ModelConfig, RankingModel
from ugsep.quant.recipe import QuantRecipe

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "ugsep-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the model it claims to hold."""


@dataclass(frozen=True)
class CheckpointInfo:
    spec: FeatureSpec
    config: ModelConfig
    version: str  # the model_version config.json records (not checked against the weights)
    quantized: bool


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
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_spec(ckpt_dir: str | Path) -> FeatureSpec:
    """The checkpoint's feature spec, from its config alone (no weights read)."""
    return checkpoint_info(ckpt_dir).spec


def checkpoint_info(ckpt_dir: str | Path) -> CheckpointInfo:
    """Spec, config, recorded version and whether it is quantized, from config.json alone: no
    weights are read and no model is built."""
    meta = read_config(ckpt_dir)
    spec, cfg, _ = _spec_and_config(ckpt_dir, meta)
    return CheckpointInfo(spec, cfg, _recorded_version(ckpt_dir, meta), bool(meta.get("quantization")))


def verify_checkpoint(ckpt_dir: str | Path) -> str:
    """Read the weights and check they hash to the version config.json records, without building
    a model; returns that model_version. Raises CheckpointError naming the file otherwise."""
    meta = read_config(ckpt_dir)
    spec, cfg, _ = _spec_and_config(ckpt_dir, meta)
    state = _read_weights(ckpt_dir)
    return _check_version(ckpt_dir, meta, model_version(spec, cfg, state, meta.get("quantization")))


def load_checkpoint(ckpt_dir: str | Path, map_location: str = "cpu",
                    backend: Backend | str = Backend.AUTO) -> tuple[RankingModel, str]:
    """Load and verify a checkpoint; returns (model in eval mode, model_version).

    ``backend``: the model's kernels (``RankingModel.use_kernels``). AUTO is resolved for
    ``map_location`` now and again whenever the model is moved, so ``.to("cuda")`` after loading
    on the CPU picks the Triton kernels.
    """
    meta = read_config(ckpt_dir)
    spec, cfg, recipe = _spec_and_config(ckpt_dir, meta)
    state = _read_weights(ckpt_dir, map_location)
    try:  # a config that passed validation can still be one no model can be built from
        model = RankingModel(spec, cfg)
        if recipe:
            from ugsep.quant.apply import quantize_model

            quantize_model(model, recipe)  # the structure; weights come next
    except Exception as e:
        raise CheckpointError(
            f"{Path(ckpt_dir) / CONFIG}: invalid model config: cannot build the model it describes "
            f"({type(e).__name__}: {e})"
        ) from e
    quant = meta.get("quantization")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(ckpt_dir) / WEIGHTS}: weights do not match the config ({e})") from None
    version = _check_version(ckpt_dir, meta, model_version(spec, cfg, state, quant))
    return model.use_kernels(backend).eval(), version


def _spec_and_config(ckpt_dir: str | Path,
                     meta: dict[str, Any]) -> tuple[FeatureSpec, ModelConfig, QuantRecipe | None]:
    """The checkpoint's spec, model config and quantization recipe (None: a float model), with
    every key of config.json checked: each error names the key's path, the value and what fits."""
    parsed = _parse(_ConfigFile, meta, "", Path(ckpt_dir) / CONFIG)
    return parsed.feature_spec, parsed.model, parsed.quantization and parsed.quantization.recipe


@dataclass(frozen=True)
class _Quantization:
    """config.json's "quantization": the recipe ``quantize_model`` applied, and to which model."""

    recipe: QuantRecipe
    base_model_version: str = field(metadata={"non_empty": True})

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class _ConfigFile:
    """config.json as ``save_checkpoint`` writes it: its fields are the keys it may hold."""

    format: str
    feature_spec: FeatureSpec
    model: ModelConfig
    model_version: str = ""  # missing: _recorded_version says so, where a version is needed
    quantization: _Quantization | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)


def _parse(cls: type, raw: Any, where: str, path: Path) -> Any:
    """Build dataclass ``cls`` from the JSON object ``raw`` found at key path ``where`` (such as
    ``feature_spec.user_fields[2]``; "" for the top level): no unknown or missing keys, parts that
    are dataclasses themselves built first, every value checked by the class (``check_fields`` in
    its ``__post_init__``). Raises CheckpointError naming ``path``, the key, the value and what fits."""
    def fail(detail: str) -> CheckpointError:
        return CheckpointError(f"{path}: invalid model config: {detail}")

    at = f"in {where}" if where else "at the top level"
    if not isinstance(raw, dict):
        raise fail(f"{where} = {raw!r} is not an object")
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(raw) - set(known))
    raw = {**getattr(cls, "ABSENT_MEANS", {}), **raw}  # keys newer than the file: their old meaning
    if unknown:
        keys = f"key {unknown[0]!r}" if len(unknown) == 1 else f"keys {unknown}"
        raise fail(f"unknown {keys} {at}; known keys are {known}")
    for f in fields(cls):
        if f.name not in raw and f.default is MISSING and f.default_factory is MISSING:
            raise fail(f"missing key {f.name!r} {at}; known keys are {known}")
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    kwargs = {key: _build(hints[key], value, prefix + key, path) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as e:
        raise fail(f"{prefix}{e.key} = {e.value!r} is not {e.expected}") from None
    except ValueError as e:  # a check across fields, e.g. d_model divisible by the token count
        raise fail(f"{where}: {e}" if where else str(e)) from None


def _build(hint: Any, value: Any, where: str, path: Path) -> Any:
    """A value of config.json for a field of type ``hint``: a dataclass (or a list of them, or
    one that may be None) built by ``_parse``; anything else as it is, for the class to check."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is types.UnionType and value is not None:  # X | None
        hint = args[0]
    if is_dataclass(hint):
        return _parse(hint, value, where, path)
    if typing.get_origin(hint) in (list, tuple) and is_dataclass(args[0]) and isinstance(value, list):
        return [_parse(args[0], item, f"{where}[{i}]", path) for i, item in enumerate(value)]
    return value


def _recorded_version(ckpt_dir: str | Path, meta: dict[str, Any]) -> str:
    version = meta.get("model_version")
    if not isinstance(version, str) or not version:
        raise CheckpointError(f"{Path(ckpt_dir) / CONFIG}: no model_version recorded")
    return version


def _read_weights(ckpt_dir: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    wpath = Path(ckpt_dir) / WEIGHTS
    try:
        return load_file(str(wpath), device=map_location)
    except FileNotFoundError:
        raise CheckpointError(f"{wpath}: no such file") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath}: unreadable safetensors file ({e})") from None


def _check_version(ckpt_dir: str | Path, meta: dict[str, Any], version: str) -> str:
    recorded = _recorded_version(ckpt_dir, meta)
    if version != recorded:
        raise CheckpointError(
            f"{Path(ckpt_dir) / WEIGHTS}: weights hash to {version} but {CONFIG} says {recorded}; "
            "the checkpoint is corrupt or was edited"
        )
    return version
