import json

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
    save_checkpoint,
    verify_checkpoint,
)
from ugsep.data.ranking_data import batch_tensors
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
    c = save_checkpoint(make_model(seed=0, pool="all"), tmp_path / "c")
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
