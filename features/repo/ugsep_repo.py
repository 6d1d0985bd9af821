"""Feast CLI entry: the same objects `ugsep features apply` registers, for ./warehouse."""

from pathlib import Path

from features.definitions import feast_objects

_WAREHOUSE = Path(__file__).resolve().parents[2] / "warehouse"
user, item, user_state, user_features, item_features = feast_objects(lambda t: str(_WAREHOUSE / t.name))
