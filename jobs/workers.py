"""mapInArrow worker functions: plain functions of Arrow record batches (no Spark inside).

They run in Spark's Python workers, but also in tests and on a GPU box without Spark. The
model is loaded once per process and cached; one model call per Arrow batch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from functools import cache, lru_cache

import numpy as np
import pyarrow as pa
import torch

from jobs.faults import exit_once, hold_once
from jobs.score_stream import STATE, check_unseen, stream_states, user_starts, whole_user_slices, whole_users
from ugsep.checkpoint import load_checkpoint
from ugsep.data.arrow_columns import field_columns, list_column
from ugsep.data.ranking_data import to_tensors
from ugsep.host_memory import keep_freed_memory
from ugsep.model import RankingModel
from ugsep.state import UserState

SCORE_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()),
                          ("score", pa.float32()), ("rank", pa.int32())])
STATE_SCHEMA = pa.schema([("user_id", pa.int64()), (STATE, pa.list_(pa.float32()))])


def pick_device(setting: str = "auto", gpu_addresses: list[str] | None = None) -> str:
    """The GPU Spark assigned to the task, else any visible CUDA device, else the CPU. A task
    given a GPU on a machine without CUDA runs on the CPU and says so on stderr (the executor's
    log), naming the address."""
    if setting != "auto":
        return setting
    if gpu_addresses and torch.cuda.is_available():
        return f"cuda:{gpu_addresses[0]}"
    if gpu_addresses:
        _say_cpu_fallback(tuple(gpu_addresses))
    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def _say_cpu_fallback(addresses: tuple[str, ...]) -> None:
    """Once per worker process and assignment."""
    print(f"ugsep worker (pid {os.getpid()}): Spark assigned GPU address {','.join(addresses)} to this task, "
          "but CUDA is not available here; running on the CPU", file=sys.stderr, flush=True)


@lru_cache(maxsize=4)
def cached_model(ckpt: str, device: str, version: str = "") -> tuple[RankingModel, str]:
    """Load once per worker process (Spark reuses Python workers across tasks), which from then
    on keeps its freed batch memory instead of page-faulting it in again every batch.
    ``version``: the model_version the driver labels the output with. It is part of the cache
    key, so a checkpoint retrained in place is loaded again, and a worker that finds another
    version at ``ckpt`` than the driver read fails instead of scoring with it."""
    keep_freed_memory()
    model, loaded = load_checkpoint(ckpt)
    if version and loaded != version:
        raise RuntimeError(f"{ckpt} holds model_version {loaded}, but this job labels its output {version}: "
                           "the checkpoint changed while the job ran; rerun it")
    if device.startswith("cuda"):
        model = model.to(device, torch.bfloat16)
    return model.to(device).eval(), loaded


def encode_user_batches(batches: Iterable[pa.RecordBatch], ckpt: str, device: str = "cpu",
                        exit_marker: str = "", users_per_call: int = 0, version: str = "") -> Iterator[pa.RecordBatch]:
    """(user_id, user fields) batches -> (user_id, state) batches, one model call per
    ``users_per_call`` users (0: per batch), whatever size the batches come in. ``version``: as
    in ``cached_model``."""
    model, _ = cached_model(ckpt, device, version)
    for whole in batches:
        step = users_per_call or whole.num_rows
        for start in range(0, whole.num_rows, max(step, 1)):
            batch = whole.slice(start, step)
            users = to_tensors(user_columns(_columns(batch), model.spec), device)
            with torch.inference_mode():
                state = model.encode_users(users).to_flat().float().cpu().numpy()
            yield pa.RecordBatch.from_arrays([batch.column("user_id"), list_column(state)], schema=STATE_SCHEMA)
            exit_once(exit_marker)


def user_columns(cols: dict[str, pa.Array], spec) -> dict[str, np.ndarray]:
    """The user fields and, for a sequence model, the sequence fields (``jobs.events`` arrays,
    oldest first) in the model's layout."""
    out = field_columns(cols, spec.user_fields)
    return out | (field_columns(cols, spec.sequence_fields, sequence=True) if spec.sequence_fields else {})


def score_user_rows(batches: Iterable[pa.RecordBatch], ckpt: str, device: str = "cpu",
                    exit_marker: str = "", max_candidates: int = 0, version: str = "",
                    holds: tuple[str, str] = ("", "")) -> Iterator[pa.RecordBatch]:
    """The score stream (``jobs.score_stream``) -> one row per candidate with its score and rank.
    ``max_candidates`` > 0 caps the candidates per model call (whole users). ``version``: as in
    ``cached_model``. ``holds``: ``jobs.faults.score_holds``."""
    model, _ = cached_model(ckpt, device, version)
    hold_once(holds[0])
    seen: set[int] = set()
    for whole in whole_users(batches):
        for batch in whole_user_slices(whole, max_candidates) if max_candidates else [whole]:
            yield _score_batch(model, batch, device, seen)
        exit_once(exit_marker)
    hold_once(holds[1])


def _score_batch(model: RankingModel, batch: pa.RecordBatch, device: str, seen: set[int]) -> pa.RecordBatch:
    """One model call for a slice of whole users (non-empty)."""
    cols = _columns(batch)
    user_ids = cols["user_id"].to_numpy(zero_copy_only=False)
    starts = user_starts(user_ids)
    check_unseen(user_ids[starts], seen)
    n_items = np.diff(np.r_[starts, len(user_ids)])
    user_index = torch.from_numpy(np.repeat(np.arange(len(starts)), n_items)).to(device)
    item_ids = cols["item_id"].to_numpy(zero_copy_only=False)
    with torch.inference_mode():
        state = _users_state(model, cols, starts, device)
        items_t = to_tensors(field_columns(cols, model.spec.candidate_fields), device)
        scores = torch.sigmoid(model.score_groups(state, items_t, user_index).float())
        rank = rank_within_users(user_index, scores, items_t["item_id"]).cpu().numpy()
        scores = scores.cpu().numpy()
    return pa.RecordBatch.from_arrays(
        [pa.array(user_ids, pa.int64()), pa.array(item_ids, pa.int64()), pa.array(scores, pa.float32()),
         pa.array(rank, pa.int32())], schema=SCORE_SCHEMA)


def _users_state(model: RankingModel, cols: dict[str, pa.Array], starts: np.ndarray, device: str) -> UserState:
    """The state of each user of a slice (users start at ``starts``); a user without a stored
    state (``--compute-missing``) is encoded from the user fields on its first row."""
    flat, known = stream_states(cols[STATE], starts, model.state_layout.width)
    if not known.all():
        missing = pa.array(starts[~known])
        sub = {f.name: cols[f.name].take(missing) for f in model.spec.user_fields}
        users = to_tensors(field_columns(sub, model.spec.user_fields), device)
        flat[~known] = model.encode_users(users).to_flat().float().cpu().numpy()
    dtype = next(model.parameters()).dtype
    return UserState.from_flat(torch.from_numpy(flat).to(device), model.state_layout, dtype)


def rank_within_users(user_index: torch.Tensor, scores: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """1-based rank of each candidate within its user: highest score first, ties by item id.

    Two stable sorts on the scores' device (item id, then user and score), so on a GPU the
    ranking costs no host round trip. Scores must lie in [0, 1].
    """
    by_item = torch.argsort(item_ids, stable=True)
    key = user_index[by_item].double() * 4 - scores[by_item].double()  # users' key ranges are disjoint
    order = by_item[torch.argsort(key, stable=True)]
    u = user_index[order]
    new_user = torch.ones_like(u, dtype=torch.bool)
    new_user[1:] = u[1:] != u[:-1]
    pos = torch.arange(len(u), device=u.device)
    starts = torch.cummax(torch.where(new_user, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - starts + 1
    return rank.to(torch.int32)


def _columns(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
