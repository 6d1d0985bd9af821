"""Online scoring: a user's precomputed state from the Feast online store + score_groups.

A request names one user and its candidate items (with item and cross features). The user's
state is fetched with ``get_online_features``; state of another model version is refused;
a user without state is encoded from its user features (also from Feast), and the response
says which happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feature_store.definitions import STATE_SERVICE, USER_FEATURES_SERVICE
from feature_store.store import check_online_store, feature_store
from ugsep.checkpoint import load_checkpoint
from ugsep.data.arrow_columns import arrow_columns, field_columns
from ugsep.data.ranking_data import to_tensors
from ugsep.features import non_key_columns
from ugsep.state import UserState


class StateVersionError(RuntimeError):
    """The online store holds state written by another model version."""


class _MessageKeyError(KeyError):
    """A KeyError whose text is its message (a plain KeyError's text is the repr of its key)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownUserError(_MessageKeyError):
    """The online store holds neither state nor features of the user: a wrong user id, or a day
    not materialized yet. (A KeyError, as raised before it had its own type.)"""


class ItemFieldError(_MessageKeyError):
    """A candidate item of a request lacks a field the model reads."""


@dataclass
class OnlineScore:
    user_id: int
    model_version: str
    state_source: str  # "online_store" or "computed_from_features"
    item_ids: list[int]
    scores: list[float]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


class OnlineScorer:
    def __init__(self, ckpt: str, warehouse: str, redis: str | None = None) -> None:
        self.model, self.version = load_checkpoint(ckpt)
        self.spec = self.model.spec
        self.store = feature_store(warehouse, redis)
        check_online_store(self.store.config)  # an unreachable Redis fails now, naming its address

    def fetch_states(self, user_ids: list[int]) -> tuple[list[str | None], list[list[float] | None]]:
        """(model_version, flat state) per user from the online store; None where absent."""
        resp = self.store.get_online_features(features=self.store.get_feature_service(STATE_SERVICE),
                                              entity_rows=[{"user_id": int(u)} for u in user_ids]).to_dict()
        return resp["model_version"], resp["state"]

    def _user_columns(self, user_id: int) -> dict[str, np.ndarray]:
        """The user's fields from the online store, in the model's layout."""
        resp = self.store.get_online_features(features=self.store.get_feature_service(USER_FEATURES_SERVICE),
                                              entity_rows=[{"user_id": int(user_id)}]).to_dict()
        names = non_key_columns(self.spec.user_fields, "user_id")
        if all(resp[n][0] is None for n in names):
            raise UnknownUserError(f"user {user_id} has neither user_state nor user_features in the online store")
        resp["user_id"] = [user_id]
        return field_columns(arrow_columns(resp, self.spec.user_fields), self.spec.user_fields)

    @torch.inference_mode()
    def score(self, user_id: int, items: dict[str, np.ndarray]) -> OnlineScore:
        """Score candidate ``items`` (item-side columns, one row per candidate) for ``user_id``."""
        (version,), (flat,) = self.fetch_states([user_id])
        if flat is not None:
            if version != self.version:
                raise StateVersionError(f"online user_state of user {user_id} was written by model {version}, "
                                        f"this scorer serves {self.version}; rerun the user stage and "
                                        "materialize with this model")
            state = UserState.from_flat(torch.tensor([flat], dtype=torch.float32), self.model.state_layout)
            source = "online_store"
        else:
            state = self.model.encode_users(to_tensors(self._user_columns(user_id)))
            source = "computed_from_features"
        n = len(items["item_id"])
        logits = self.model.score_groups(state, to_tensors(items), torch.zeros(n, dtype=torch.long))
        return OnlineScore(int(user_id), self.version, source, [int(i) for i in items["item_id"]],
                           torch.sigmoid(logits).tolist())


def items_from_records(records: list[dict], spec) -> dict[str, np.ndarray]:
    """JSON-style candidate records (item and context fields) -> the model's candidate columns."""
    fields = spec.candidate_fields
    try:
        values = {f.name: [r[f.name] for r in records] for f in fields}
    except KeyError as e:
        raise ItemFieldError(f"a candidate item is missing field {e.args[0]!r}") from None
    return field_columns(arrow_columns(values, fields), fields)
