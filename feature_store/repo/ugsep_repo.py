"""Feast CLI entry (`cd feature_store/repo && feast apply`): the objects `ugsep features apply`
registers for the repository's ./job.toml (its model's spec, its tables)."""

from pathlib import Path

from jobs.config import load_config
from jobs.materialize import warehouse_feast_objects

_objects = warehouse_feast_objects(load_config(str(Path(__file__).resolve().parents[2] / "job.toml")))
globals().update({o.name: o for o in _objects})  # Feast collects the module's objects
