import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model

from ugsep.checkpoint import (
    CONFIG,
    WEIGHTS,
    CheckpointError,
    checkpoint_info,
    load_checkpoint,
    read_spec,
    save_checkpoint,
    verify_checkpoint,
)
from ugsep.data.ranking_data import batch_tensors
from ugsep.features import FeatureSpec, Field
from ugsep.model import ModelConfig
from ugsep.quant import QuantRecipe, quantize_model


def test_roundtrip_keeps_scores_and_version(tmp_path, small_day):
    model = make_model()
    version = save_checkpoint(model, tmp_path)
    loaded, loaded_version = load_checkpoint(tmp_path)
    assert loaded_version == version and version.startswith("ugsep-")
    users, items, idx, _ = batch_tensors(small_day, np.arange(100))
    with torch.no_grad():
        torch.testing.assert_close(loaded(users, items, idx), model(users, items, idx), rtol=0, atol=0)


def test_version_depends_on_weights_and_config(tmp_path):
    a = save_checkpoint(make_model(seed=0), tmp_path / "a")
    b = save_checkpoint(make_model(seed=1), tmp_path / "b")
    c = save_checkpoint(make_model(seed=0, pool="group"), tmp_path / "c")
    assert len({a, b, c}) == 3


def test_no_pickle_in_checkpoint(tmp_path):
    save_checkpoint(make_model(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS, CONFIG])
    json.loads((tmp_path / CONFIG).read_text())


def test_corrupt_weights_fail_clearly(tmp_path):
    save_checkpoint(make_model(), tmp_path)
    raw = bytearray((tmp_path / WEIGHTS).read_bytes())
    raw[-100] ^= 0xFF  # flip bits inside a tensor: still parses, hash no longer matches
    (tmp_path / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)
    (tmp_path / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_mismatched_config_fails_clearly(tmp_path):
    save_checkpoint(make_model(), tmp_path)
    meta = json.loads((tmp_path / CONFIG).read_text())
    meta["model"]["n_layers"] = 3
    (tmp_path / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nope")):
        load_checkpoint(tmp_path / "nope")


def test_info_reads_the_config_alone(tmp_path):
    model = make_model(pool="all")
    version = save_checkpoint(model, tmp_path)
    (tmp_path / WEIGHTS).unlink()  # no weights needed
    info = checkpoint_info(tmp_path)
    assert (info.spec, info.config, info.version, info.quantized) == (model.spec, model.cfg, version, False)
    quantized = quantize_model(make_model(), QuantRecipe("w8a16"))
    q_version = save_checkpoint(quantized, tmp_path / "q", quant={"recipe": QuantRecipe("w8a16").to_dict(),
                                                                   "base_model_version": version})
    assert checkpoint_info(tmp_path / "q").quantized and checkpoint_info(tmp_path / "q").version == q_version
    with pytest.raises(CheckpointError, match=str(tmp_path / "nope")):
        checkpoint_info(tmp_path / "nope")


def test_verify_checks_the_weights_without_a_model(tmp_path, monkeypatch):
    version = save_checkpoint(quantize_model(make_model(), QuantRecipe("w8a16")), tmp_path,
                              quant={"recipe": QuantRecipe("w8a16").to_dict(), "base_model_version": "ugsep-x"})
    monkeypatch.setattr("ugsep.checkpoint.RankingModel", None)  # building one would fail
    assert verify_checkpoint(tmp_path) == version


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_verify_rejects_damaged_weights_naming_the_file(tmp_path, damage):
    save_checkpoint(make_model(), tmp_path)
    raw = bytearray((tmp_path / WEIGHTS).read_bytes())
    if damage == "flip":
        raw[-100] ^= 0xFF  # still parses; the hash no longer matches
    else:
        raw = raw[: len(raw) // 2]
    (tmp_path / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(tmp_path / WEIGHTS)):
        verify_checkpoint(tmp_path)


def _edit_config(path, edit):
    meta = json.loads((path / CONFIG).read_text())
    edit(meta)
    (path / CONFIG).write_text(json.dumps(meta))


def _save_quantized(path):
    recipe = QuantRecipe("w8a16")
    return save_checkpoint(quantize_model(make_model(), recipe), path,
                           quant={"recipe": recipe.to_dict(), "base_model_version": "ugsep-x"})


def _set(*keys_and_value):
    """An edit of config.json: the value at a key path ("model", "d_model", value)."""
    *keys, last, value = keys_and_value

    def edit(meta):
        for k in keys:
            meta = meta[k]
        meta[last] = value
    return edit


# (edit, the message after "<path>/config.json: invalid model config: ")
BAD_CONFIGS = {
    "d_model text": (_set("model", "d_model", "sixty-four"), "model.d_model = 'sixty-four' is not an integer >= 1"),
    "head_hidden text": (_set("model", "head_hidden", "abc"), "model.head_hidden = 'abc' is not an integer >= 1"),
    "n_layers 0": (_set("model", "n_layers", 0), "model.n_layers = 0 is not an integer >= 1"),
    "n_layers bool": (_set("model", "n_layers", True), "model.n_layers = True is not an integer >= 1"),
    "d_model quoted": (_set("model", "d_model", "64"), "model.d_model = '64' is not an integer >= 1"),
    "compensation text": (_set("model", "compensation", "yes"), "model.compensation = 'yes' is not a boolean"),
    "arch": (_set("model", "arch", "dlrm"), "model.arch = 'dlrm' is not one of ['rankmixer', 'ugsep', 'hyformer']"),
    "not divisible": (_set("model", "d_model", 30), "model: d_model=30 must be divisible by T=8"),
    "unknown top-level key": (_set("modle", {}), "unknown key 'modle' at the top level; known keys are "
                              "['extra', 'feature_spec', 'format', 'model', 'model_version', 'quantization']"),
    "unknown model key": (_set("model", "d_modle", 64), "unknown key 'd_modle' in model; known keys are ['arch', "),
    "unknown field key": (_set("feature_spec", "user_fields", 2, "colour", "red"),
                          "unknown key 'colour' in feature_spec.user_fields[2]; known keys are "
                          "['buckets', 'dim', 'kind', 'max_len', 'name', 'shares']"),
    "missing field key": (lambda m: m["feature_spec"]["item_fields"][0].pop("name"),
                          "missing key 'name' in feature_spec.item_fields[0]"),
    "buckets 0": (_set("feature_spec", "user_fields", 2, "buckets", 0),
                  "feature_spec.user_fields[2].buckets = 0 is not an integer >= 1"),
    "dim float": (_set("feature_spec", "item_fields", 1, "dim", 8.0),
                  "feature_spec.item_fields[1].dim = 8.0 is not an integer >= 1"),
    "empty name": (_set("feature_spec", "user_fields", 0, "name", ""),
                   "feature_spec.user_fields[0].name = '' is not a non-empty string"),
    "kind sequence": (_set("feature_spec", "user_fields", 1, "kind", "sequence"),
                      "feature_spec.user_fields[1].kind = 'sequence' is not a valid FieldKind "
                      "(one of ['categorical', 'multi', 'dense'])"),
    "dense_policy drop": (_set("feature_spec", "dense_policy", "drop"),
                          "feature_spec.dense_policy = 'drop' is not a valid DensePolicy (one of ['reject', 'clamp'])"),
    "fields not a list": (_set("feature_spec", "context_fields", "recency"),
                          "feature_spec.context_fields = 'recency' is not a list of Fields"),
    "field not an object": (_set("feature_spec", "item_fields", 0, 5),
                            "feature_spec.item_fields[0] = 5 is not an object"),
    "model not an object": (_set("model", [64]), "model = [64] is not an object"),
}
QUANT_CONFIGS = {
    "mode int4": (_set("quantization", "recipe", "mode", "int4"),
                  "quantization.recipe.mode = 'int4' is not one of ['w8a16', 'fp8', 'w8a16+fp8']"),
    "group_size negative": (_set("quantization", "recipe", "group_size", -1),
                            "quantization.recipe.group_size = -1 is not an integer >= 0"),
    "error bound text": (_set("quantization", "recipe", "fp8_max_rel_error", "5%"),
                         "quantization.recipe.fp8_max_rel_error = '5%' is not a number >= 0"),
    "float layer not a string": (_set("quantization", "recipe", "float_layers", ["blocks.0.ffn.fc1", 3]),
                                 "quantization.recipe.float_layers[1] = 3 is not a string"),
    "unknown recipe key": (_set("quantization", "recipe", "bits", 4),
                           "unknown key 'bits' in quantization.recipe; known keys are "
                           "['float_layers', 'fp8_max_rel_error', 'group_size', 'mode']"),
    "no base version": (_set("quantization", "base_model_version", ""),
                        "quantization.base_model_version = '' is not a non-empty string"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A float and a quantized checkpoint, saved once; tests edit copies."""
    root = tmp_path_factory.mktemp("saved")
    save_checkpoint(make_model(), root / "float")
    _save_quantized(root / "quantized")
    return root


@pytest.mark.parametrize("reader", [load_checkpoint, checkpoint_info, verify_checkpoint, read_spec])
@pytest.mark.parametrize("case", [*BAD_CONFIGS, *QUANT_CONFIGS])
def test_a_bad_config_names_the_key_the_value_and_what_fits(tmp_path, saved, case, reader):
    edit, message = QUANT_CONFIGS[case] if case in QUANT_CONFIGS else BAD_CONFIGS[case]
    tmp_path = Path(shutil.copytree(saved / ("quantized" if case in QUANT_CONFIGS else "float"), tmp_path / "ckpt"))
    _edit_config(tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        reader(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / CONFIG}: invalid model config: {message}")


def test_a_config_no_model_can_be_built_from_names_the_config(tmp_path):
    """A problem only building the model finds (a group size that does not divide a layer's
    width) is a CheckpointError naming config.json, not the raw exception."""
    _save_quantized(tmp_path)
    _edit_config(tmp_path, _set("quantization", "recipe", "group_size", 5))
    assert checkpoint_info(tmp_path).quantized  # valid as far as types and ranges go
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / CONFIG))}: .*cannot build the model.*"
                       "group_size 5 does not divide"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("quantized", [False, True])
def test_a_valid_config_loads_with_its_version(tmp_path, quantized):
    """Validation changes nothing about a valid checkpoint: the config that is hashed stays
    byte-identical, so the version is the one save_checkpoint returned."""
    version = _save_quantized(tmp_path) if quantized else save_checkpoint(make_model(pool="all"), tmp_path)
    assert load_checkpoint(tmp_path)[1] == version == verify_checkpoint(tmp_path) == checkpoint_info(tmp_path).version
    assert checkpoint_info(tmp_path).quantized is quantized
    _edit_config(tmp_path, lambda meta: meta.pop("extra"))  # optional keys may be left out
    assert load_checkpoint(tmp_path)[1] == version


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(ValueError, match=r"ModelConfig: d_model = '64' is not an integer >= 1"):
        ModelConfig(d_model="64")
    with pytest.raises(ValueError, match=r"ModelConfig: compensation = 1 is not a boolean"):
        ModelConfig(compensation=1)
    with pytest.raises(ValueError, match=r"field 'age': buckets = 0 is not an integer >= 1"):
        Field("age", "categorical", buckets=0)
    with pytest.raises(ValueError, match=r"FeatureSpec: user_fields\[0\] = 'age' is not a Field"):
        FeatureSpec(("age",), ())
    with pytest.raises(ValueError, match=r"QuantRecipe: mode = 'int4' is not one of"):
        QuantRecipe("int4")
    assert QuantRecipe(fp8_max_rel_error=0).fp8_max_rel_error == 0  # an int where a float belongs is fine
