"""Online scoring: users' precomputed state from the online store + score_groups.

A request names one user and its candidate items (with item and context fields). The user's
state is read from the online store (``serving.state_reader``: a lean read of the stored bytes,
or Feast's ``get_online_features``); state of another model version is refused; a user without
state is encoded from its user features (read through Feast), and the result says which
happened. ``score_many`` scores several requests in one model call (the service's micro-batches):
every user's state is read in one store round trip and all candidates go through one
``score_groups``; a request that fails (unknown user, state of another version) fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from feature_store.definitions import USER_FEATURES_SERVICE
from feature_store.store import check_online_store, feature_store
from serving.request import ItemFieldError, ScoreRequest, candidate_columns
from serving.state_reader import state_reader
from ugsep.checkpoint import load_checkpoint
from ugsep.data.arrow_columns import arrow_columns, field_columns
from ugsep.data.ranking_data import to_tensors
from ugsep.features import FieldKind, non_key_columns
from ugsep.state import UserState

__all__ = ["ItemFieldError", "OnlineScore", "OnlineScorer", "StateVersionError", "UnknownUserError",
           "items_from_records"]

ONLINE_STORE, COMPUTED = "online_store", "computed_from_features"
REDIS_TIMEOUT_S = 1.0  # a stalled Redis fails the request (503) instead of holding every request behind it
# bfloat16 on a CPU with native bf16 products (AVX512-BF16 or AMX): oneDNN runs the matrix
# products in bf16 (docs/performance.md: Online scoring). The stored state stays float32 and
# is cast when read. Scores then differ from the batch jobs' float32 scores by bf16 rounding
# (docs/operations.md, Online scoring service, gives the bound the tests check).
SERVING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or amx_bf16); None where unknown."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:  # no x86 flags line (an Arm CPU lists "Features"): unknown
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


class StateVersionError(RuntimeError):
    """The online store holds state written by another model version (or of another width)."""


class UnknownUserError(KeyError):
    """The online store holds neither state nor features of the user: a wrong user id, or a day
    not materialized yet. A KeyError: the user is a key the store lacks."""

    def __str__(self) -> str:  # a plain KeyError's text is the repr of its key
        return str(self.args[0]) if self.args else ""


class SequenceFeaturesError(RuntimeError):
    """A user without stored state cannot be encoded: the model reads sequence fields, which the
    online store does not hold."""


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
    """The model (loaded once) and the online store of a warehouse. ``read``: ``lean`` reads
    states straight from SQLite or Redis, ``feast`` through ``get_online_features``.
    ``other_version``: what to do with a user whose stored state is of another model version,
    ``refuse`` (StateVersionError) or ``compute`` (encode the user from its features, as while a
    new model's state is materialized before the service restarts with that model).
    ``dtype``: the model's precision, ``float32`` (the batch jobs' CPU scores) or ``bfloat16``
    (stored states are cast on read; see ``SERVING_DTYPES``)."""

    def __init__(self, ckpt: str, warehouse: str, redis: str | None = None, read: str = "lean",
                 other_version: str = "refuse", dtype: str = "float32") -> None:
        if other_version not in ("refuse", "compute"):
            raise ValueError(f"other_version must be 'refuse' or 'compute', got {other_version!r}")
        if dtype not in SERVING_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(SERVING_DTYPES)}, got {dtype!r}")
        self.other_version = other_version
        self.dtype_name, self.dtype = dtype, SERVING_DTYPES[dtype]
        model, self.version = load_checkpoint(ckpt)
        self.model = model.to(self.dtype)
        self.spec = self.model.spec
        self.layout = self.model.state_layout
        self.store = feature_store(warehouse, redis, redis_timeout_s=REDIS_TIMEOUT_S)
        check_online_store(self.store.config)  # an unreachable Redis fails now, naming its address
        self.reader = state_reader(self.store, read)  # an unregistered state view fails now, naming the fix

    @property
    def online_store(self) -> str:
        return self.store.config.online_store.type

    def fetch_states(self, user_ids: Sequence[int]) -> tuple[list[str | None], list[np.ndarray | None]]:
        """(model_version, flat float32 state) per user from the online store; None where absent."""
        return self.reader.read([int(u) for u in user_ids])

    def _user_columns(self, user_ids: list[int]) -> tuple[dict[str, np.ndarray], list[bool]]:
        """The users' fields from the online store, in the model's layout, and which users have any."""
        resp = self.store.get_online_features(features=self.store.get_feature_service(USER_FEATURES_SERVICE),
                                              entity_rows=[{"user_id": int(u)} for u in user_ids]).to_dict()
        names = non_key_columns(self.spec.user_fields, "user_id")
        found = [any(resp[n][i] is not None for n in names) for i in range(len(user_ids))]
        resp["user_id"] = list(user_ids)
        return field_columns(arrow_columns(resp, self.spec.user_fields), self.spec.user_fields), found

    def _computed_states(self, user_ids: list[int]) -> dict[int, np.ndarray | Exception]:
        """Flat state per user encoded from its online user features, or the error that prevents it."""
        if self.spec.sequence_fields:
            names = ", ".join(f.name for f in self.spec.sequence_fields)
            return {u: SequenceFeaturesError(f"user {u} has no user_state in the online store, and model "
                                             f"{self.version} reads sequence fields ({names}) that the online "
                                             "store does not hold; materialize the user's state")
                    for u in user_ids}
        cols, found = self._user_columns(user_ids)
        flat = self.model.encode_users(to_tensors(cols)).to_flat().numpy()
        return {u: flat[i] if ok else UnknownUserError(
            f"user {u} has neither user_state nor user_features in the online store")
            for i, (u, ok) in enumerate(zip(user_ids, found, strict=True))}

    def _states(self, user_ids: list[int]) -> dict[int, tuple[np.ndarray, str] | Exception]:
        """(flat state, source) per distinct user, or the error that fails the user's requests."""
        versions, states = self.fetch_states(user_ids)
        out: dict[int, tuple[np.ndarray, str] | Exception] = {}
        missing = []
        for u, version, flat in zip(user_ids, versions, states, strict=True):
            if flat is None or (version != self.version and self.other_version == "compute"):
                missing.append(u)
            elif version != self.version:
                out[u] = StateVersionError(f"online user_state of user {u} was written by model {version}, this "
                                           f"scorer serves {self.version}; rerun the user stage and materialize "
                                           "with this model")
            elif flat.shape != (self.layout.width,):
                out[u] = StateVersionError(f"online user_state of user {u} has {flat.shape[0]} floats, model "
                                           f"{self.version} expects {self.layout.width}; rematerialize the day")
            else:
                out[u] = (flat, ONLINE_STORE)
        if missing:
            for u, r in self._computed_states(missing).items():
                out[u] = r if isinstance(r, Exception) else (r, COMPUTED)
        return out

    @torch.inference_mode()
    def score_many(self, requests: Sequence[ScoreRequest]) -> list[OnlineScore | Exception]:
        """Score every request in one model call; a request that cannot be scored gets its error."""
        users = list(dict.fromkeys(r.user_id for r in requests))
        states = self._states(users)
        good = [r for r in requests if not isinstance(states[r.user_id], Exception)]
        results: dict[int, OnlineScore | Exception] = {}
        if good:
            try:
                probs = self._score(good, states)
            except Exception as e:  # a request the model refuses must not fail the others of its batch
                for r in good:
                    results[id(r)] = e if len(good) == 1 else self.score_many([r])[0]
            else:
                for r, p in zip(good, probs, strict=True):
                    results[id(r)] = OnlineScore(r.user_id, self.version, states[r.user_id][1], r.item_ids, p.tolist())
        return [states[r.user_id] if isinstance(states[r.user_id], Exception) else results[id(r)] for r in requests]

    def _score(self, requests: list[ScoreRequest], states: dict) -> list[np.ndarray]:
        """Probabilities per request: the requests' users' states, all candidates in one score_groups."""
        users = list(dict.fromkeys(r.user_id for r in requests))
        row = {u: i for i, u in enumerate(users)}
        flat = torch.from_numpy(np.stack([states[u][0] for u in users]))  # (users, width) float32
        state = UserState.from_flat(flat, self.layout, self.dtype)
        counts = [len(r) for r in requests]
        items = {k: np.concatenate([r.items[k] for r in requests]) for k in requests[0].items}
        user_index = torch.from_numpy(np.repeat(np.array([row[r.user_id] for r in requests]), counts))
        probs = torch.sigmoid(self.model.score_groups(state, to_tensors(items), user_index).float()).numpy()
        return np.split(probs, np.cumsum(counts)[:-1])

    def score(self, user_id: int, items: dict[str, np.ndarray]) -> OnlineScore:
        """Score candidate ``items`` (item-side columns, one row per candidate) for ``user_id``."""
        out = self.score_many([ScoreRequest(int(user_id), [int(i) for i in items["item_id"]], items)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def warm_up(self) -> None:
        """One model call on a zero state and a zero candidate, so the first request pays no lazy setup."""
        record = {f.name: [] if f.kind == FieldKind.MULTI else 0 for f in self.spec.candidate_fields}
        items = to_tensors(candidate_columns([record], self.spec))
        state = UserState.from_flat(torch.zeros(1, self.layout.width), self.layout, self.dtype)
        with torch.inference_mode():
            self.model.score_groups(state, items, torch.zeros(1, dtype=torch.long))


def items_from_records(records: list[dict], spec) -> dict[str, np.ndarray]:
    """JSON-style candidate records (item and context fields) -> the model's candidate columns;
    a RequestError (a ValueError) names a missing or mistyped field."""
    return candidate_columns(records, spec)
