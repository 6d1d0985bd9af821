"""The score stream: the row protocol between the score stage and its Python workers.

The score stage sends each day's good candidates to ``mapInArrow`` as rows of
``(user_id, state, item fields..., [user fields...])`` such that

- a user's rows are consecutive within a partition (one run per user, ordered by item id);
- the user's flat state (``UserState.to_flat``) is on the run's first row only, null on the
  others, so a state crosses the JVM -> Python boundary once per user, not per candidate;
- a first row with a null state marks a user without stored state, encoded in the worker
  from the user fields on that row (``--compute-missing``).

Spark side: ``user_ordered_rows`` builds the stream. Python side: ``whole_users`` regroups the
Arrow batches so no batch splits a user, ``whole_user_slices`` cuts them into model calls,
``check_unseen`` fails on a user seen twice and ``stream_states`` reads the users' states.
``user_rows_batch`` builds the same rows without Spark, for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ugsep.data.arrow_columns import to_arrow_column
from ugsep.data.ranking_data import whole_user_cuts

STATE = "state"  # the column that carries a user's flat state on its first row


# --- Spark side ---
def user_ordered_rows(good: DataFrame, state: DataFrame) -> DataFrame:
    """Good candidates with each user's rows consecutive, by item id, the user's state on the
    first row only. The duplicate check already sorted the rows so, and the planner drops the
    explicit sort; it keeps users whole if a future plan reorders rows (e.g. a shuffle join on item_id)."""
    first = F.row_number().over(Window.partitionBy("user_id").orderBy("item_id")) == 1
    states = state.select(F.col("user_id").alias("_state_user"), STATE)
    on = (F.col("user_id") == F.col("_state_user")) & F.col("_first")
    joined = good.withColumn("_first", first).join(states, on, "left").drop("_state_user", "_first")
    return joined.sortWithinPartitions("user_id", "item_id")


def user_rows_batch(user_ids: np.ndarray, state: pa.Array, items: dict[str, np.ndarray],
                    counts: np.ndarray, extra: dict[str, pa.Array] | None = None) -> pa.RecordBatch:
    """The stream's rows without Spark: ``counts[u]`` consecutive candidate rows for user u, the
    user's state on the user's first row only (null on the others); ``extra`` user columns on every row."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.zeros(len(owner), dtype=bool)
    first[(np.cumsum(counts) - counts)[counts > 0]] = True
    state_rows = state.take(pa.array(np.where(first, owner, 0), mask=~first))
    user_cols = {k: v.take(pa.array(owner)) for k, v in (extra or {}).items()}
    return pa.RecordBatch.from_pydict({"user_id": to_arrow_column(user_ids[owner]), STATE: state_rows,
                                       **{k: to_arrow_column(v) for k, v in items.items()}, **user_cols})


# --- Python worker side ---
def user_starts(user_ids: np.ndarray) -> np.ndarray:
    """Row index where each run of equal user ids begins."""
    return np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])


def whole_users(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Regroup batches of user-ordered rows so that none splits a user: the rows of a batch's
    last user wait for the next batch."""
    tail = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        rows = batch if tail is None else pa.concat_batches([tail, batch])
        cut = int(user_starts(rows.column("user_id").to_numpy(zero_copy_only=False))[-1])
        if cut:
            yield rows.slice(0, cut)
        tail = rows.slice(cut)
    if tail is not None:
        yield tail


def whole_user_slices(batch: pa.RecordBatch, max_candidates: int) -> Iterator[pa.RecordBatch]:
    """``whole_user_cuts`` of a batch of user-ordered rows."""
    for begin, end in whole_user_cuts(batch.column("user_id").to_numpy(zero_copy_only=False), max_candidates):
        yield batch.slice(begin, end - begin)


def check_unseen(user_ids: np.ndarray, seen: set[int]) -> None:
    """A user must arrive as one run of rows (its rank and state are per run); fail loudly if not."""
    again = seen.intersection(user_ids.tolist())
    if again:
        raise RuntimeError(f"candidates of users {sorted(again)[:5]} are not consecutive in the score stream")
    seen.update(user_ids.tolist())


def stream_states(state_col: pa.Array, starts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, width) float32 states of the users starting at rows ``starts``, zeros for users
    without one, and the mask of users that have one. Only first rows carry a state, so the
    non-null states, in row order, are the users' states in user order (no gather needed)."""
    has = state_col.is_valid().to_numpy(zero_copy_only=False)
    known = has[starts]
    if has.sum() != known.sum():
        raise RuntimeError("a user state arrived on a row other than its user's first: the score stream is malformed")
    flat = fixed_width(state_col, width)
    if known.all():
        return flat, known
    full = np.zeros((len(starts), width), dtype=np.float32)
    full[known] = flat
    return full, known


def fixed_width(arr: pa.Array, width: int) -> np.ndarray:
    """list<float>, every non-null row of length ``width`` -> (non-null rows, width) float32."""
    rows = len(arr) - arr.null_count
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32)
    if values.size != rows * width:
        raise ValueError(f"user state rows do not all have width {width} (got {values.size} values "
                         f"for {rows} users)")
    return values.reshape(rows, width)
