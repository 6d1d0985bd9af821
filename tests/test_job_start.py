"""The Spark driver reads a checkpoint's spec and version without building the model."""

import os

import pytest
from conftest import make_model

from jobs import job_start
from ugsep.checkpoint import CheckpointError, save_checkpoint


def test_the_driver_checks_a_checkpoint_without_building_it(tmp_path, monkeypatch):
    version = save_checkpoint(make_model(seed=1), tmp_path / "m")
    monkeypatch.setattr("ugsep.model.RankingModel.__init__", lambda *a, **k: pytest.fail("built a model"))
    hashed = []
    monkeypatch.setattr(job_start, "verify_checkpoint", lambda p: hashed.append(p) or version)
    job_start._verified.cache_clear()
    spec, got = job_start.checked_checkpoint(str(tmp_path / "m"))
    assert got == version and spec.user_fields
    job_start.checked_checkpoint(str(tmp_path / "m"))  # the second stage of `ugsep run`: no second hash
    assert len(hashed) == 1
    os.utime(tmp_path / "m" / "model.safetensors", ns=(1, 1))  # the file changed: hashed again
    job_start.checked_checkpoint(str(tmp_path / "m"))
    assert len(hashed) == 2


def test_the_driver_refuses_corrupt_weights(tmp_path):
    save_checkpoint(make_model(seed=1), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    job_start._verified.cache_clear()
    with pytest.raises(CheckpointError, match="corrupt"):
        job_start.checked_checkpoint(str(tmp_path / "m"))
    (weights).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        job_start.checked_checkpoint(str(tmp_path / "m"))


def test_a_field_kind_the_converter_does_not_know_is_refused(tmp_path):
    """A checkpoint from a newer ugsep (or edited by hand) with an unknown field kind fails when
    its spec is read, naming the kind, before any table is touched."""
    import json

    save_checkpoint(make_model(seed=1), tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["feature_spec"]["user_fields"][1]["kind"] = "sequence"
    config.write_text(json.dumps(meta))
    job_start._verified.cache_clear()
    with pytest.raises(CheckpointError, match="invalid model config.*'sequence' is not a valid FieldKind"):
        job_start.checked_checkpoint(str(tmp_path / "m"))


def test_a_sequence_model_is_accepted_and_needs_the_events_table(tmp_path):
    from jobs.contracts import USER_EVENTS, input_contracts
    from ugsep.config import ModelConfig
    from ugsep.data.synthetic import synthetic_sequence_spec
    from ugsep.model import RankingModel

    save_checkpoint(RankingModel(synthetic_sequence_spec(8), ModelConfig(arch="hyformer")), tmp_path / "h")
    spec, _ = job_start.checked_checkpoint(str(tmp_path / "h"))
    assert [f.name for f in spec.sequence_fields] == ["hist_item_id", "hist_category"]
    assert USER_EVENTS in input_contracts(spec)
