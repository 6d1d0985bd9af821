"""Feast CLI entry: the same objects `ugsep features apply` registers, for ./warehouse."""

from pathlib import Path

from feature_store.definitions import feast_objects
from jobs.contracts import ITEM_FEATURES, USER_FEATURES, USER_STATE

_WAREHOUSE = Path(__file__).resolve().parents[2] / "warehouse"
user, item, user_state, user_features, item_features = feast_objects(
    *(str(_WAREHOUSE / t.name) for t in (USER_STATE, USER_FEATURES, ITEM_FEATURES)))
