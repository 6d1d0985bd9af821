"""Columnar (user, candidate) data in numpy, and its conversion to model batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Columns = dict[str, np.ndarray]


@dataclass
class RankingData:
    """N labelled candidates of U users.

    users: one row per user (every user field, plus ``user_id``)
    items: one row per candidate (item fields and cross fields)
    user_row: (N,) row of each candidate's user in ``users``
    label: (N,) 0/1 float32
    time: (N,) when each candidate was shown or rated (any increasing unit), or None where the
          data has no event time
    """

    users: Columns
    items: Columns
    user_row: np.ndarray
    label: np.ndarray
    time: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_users(self) -> int:
        return len(self.users["user_id"])

    def take(self, idx: np.ndarray) -> RankingData:
        """Candidates ``idx``, with the user table compacted to the users they reference."""
        rows, inverse = np.unique(self.user_row[idx], return_inverse=True)
        return RankingData(
            users={k: v[rows] for k, v in self.users.items()},
            items={k: v[idx] for k, v in self.items.items()},
            user_row=inverse.astype(np.int64),
            label=self.label[idx],
            time=None if self.time is None else self.time[idx],
        )

    def user_ids(self) -> np.ndarray:
        """(N,) user id of each candidate."""
        return self.users["user_id"][self.user_row]


def to_tensors(cols: Columns, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in cols.items()}


def batch_tensors(
    data: RankingData, idx: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """(users, items, user_index, label) tensors for candidates ``idx``: users deduplicated."""
    sub = data.take(idx)
    return (
        to_tensors(sub.users, device),
        to_tensors(sub.items, device),
        torch.from_numpy(sub.user_row).to(device),
        torch.from_numpy(sub.label).to(device),
    )


def whole_user_cuts(user_ids: np.ndarray, max_rows: int) -> Iterator[tuple[int, int]]:
    """(begin, end) of consecutive slices of user-ordered rows, each of whole users and at most
    ``max_rows`` rows (a user with more rows than that gets a slice of its own)."""
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if len(user_ids) else np.zeros(0, int)
    first = 0
    for start, end in zip(starts, np.r_[starts[1:], len(user_ids)], strict=True):
        if start > first and end - first > max_rows:
            yield first, int(start)
            first = int(start)
    yield first, len(user_ids)


def last_share_per_user(user: np.ndarray, order: tuple[np.ndarray, ...], share: float) -> np.ndarray:
    """(N,) mask of each user's last ``share`` of rows, rows ordered by the keys ``order`` (most
    significant first: e.g. (time, item id)). A user with n rows gives floor(n * share + 0.5)."""
    by = np.lexsort((*reversed(order), user))  # by user, then the keys in turn
    u = np.asarray(user)[by]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(u)])
    rank = np.arange(len(u)) - np.repeat(starts, counts)  # position within the user
    n_last = np.floor(counts * share + 0.5).astype(np.int64)
    mask = np.zeros(len(u), dtype=bool)
    mask[by] = rank >= np.repeat(counts - n_last, counts)
    return mask


def split_last_share(data: RankingData, share: float, seed: int = 0) -> tuple[RankingData, RankingData]:
    """(earlier, later): each user's last ``share`` of candidates goes to ``later``. Rows are
    ordered by ``data.time`` (ties by item id), so ``later`` is the user's most recent period;
    data without event time is ordered by a seeded random key instead."""
    key = data.time if data.time is not None else np.random.default_rng(seed).random(len(data))
    tiebreak = data.items.get("item_id", np.arange(len(data)))
    later = last_share_per_user(data.user_ids(), (key, tiebreak), share)
    return data.take(np.flatnonzero(~later)), data.take(np.flatnonzero(later))
