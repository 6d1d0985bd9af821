import json

import numpy as np
import pytest
import torch
from conftest import make_model

from ugsep.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint
from ugsep.data.ranking_data import batch_tensors


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
