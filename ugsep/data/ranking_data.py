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
    """

    users: Columns
    items: Columns
    user_row: np.ndarray
    label: np.ndarray

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
