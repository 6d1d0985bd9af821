"""MovieLens-100k from its public files (u.data, u.user, u.item) in ``data_dir``.

Label = rating >= 4. Test split: each user's last 20% of ratings by timestamp (ties by item
id). User side: user id, age bucket, gender, occupation, zip prefix. Item side: item id,
release year, genres (multi-valued).

``read_movielens`` parses and checks the files (a malformed line is an error naming the file
and line); ``movielens_features`` derives the user and item feature columns from what it
read. ``load_movielens`` (training, eval) and the Spark importer (``jobs/importers.py``) both
go through them, so the tables hold exactly the values the model was trained on.

``load_movielens_sequences`` adds each row's history (past items and their ratings) without
label leakage: histories hold training-period ratings only, and a training row's only those of
earlier days (``history_snapshots`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ugsep.data.arrow_columns import SEQUENCE_ARROW_TYPE, arrow_columns, field_columns
from ugsep.data.ranking_data import Columns, RankingData, last_share_per_user
from ugsep.features import FeatureSpec, Field, FieldKind, stable_id

N_GENRES = 19
TEST_SHARE = 0.2  # each user's last 20% of ratings by time are the test split
DAY = 86_400  # seconds: histories are cut at UTC day boundaries of the unix timestamps
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])

# (file, field separator, fields a line has, positions of the integer fields)
U_DATA = ("u.data", "\t", 4, range(4))  # user id, item id, rating, timestamp
U_USER = ("u.user", "|", 5, (0, 1))  # user id, age, gender, occupation, zip code
# item id, title, release date, video release date, IMDb URL, then one 0/1 flag per genre
U_ITEM = ("u.item", "|", 5 + N_GENRES, (0, *range(5, 5 + N_GENRES)))


def movielens_spec() -> FeatureSpec:
    return FeatureSpec(
        user_fields=(
            Field("user_id", "categorical", buckets=2000, dim=16),
            Field("age_bucket", "categorical", buckets=len(AGE_EDGES) + 1, dim=4),
            Field("gender", "categorical", buckets=4, dim=4),
            Field("occupation", "categorical", buckets=64, dim=8),
            Field("zip_prefix", "categorical", buckets=128, dim=8),
        ),
        item_fields=(
            Field("item_id", "categorical", buckets=4000, dim=16),
            Field("release_year", "categorical", buckets=128, dim=8),
            Field("genres", "multi", buckets=N_GENRES, dim=8, max_len=N_GENRES),
        ),
    )


def movielens_sequence_spec(seq_len: int = 50) -> FeatureSpec:
    """``movielens_spec`` plus the user's last ``seq_len`` ratings before the row: the film
    (sharing the candidate's item_id table) and the stars given (dense, 1 to 5)."""
    return movielens_spec().with_history(seq_len, Field("hist_rating", "dense"))


@dataclass(frozen=True)
class MovieLensFiles:
    """The three files as read: every non-blank line split into its fields, in file order."""

    ratings: np.ndarray  # (N, 4) int64: user id, item id, rating, timestamp (u.data)
    user_rows: list[list[str]]  # u.user
    item_rows: list[list[str]]  # u.item
    lines: dict[str, list[int]]  # file name -> 1-based line number of each row, for error messages


def _read(path: Path, sep: str, n_fields: int, int_fields) -> tuple[list[list[str]], list[int]]:
    """Non-blank lines of ``path`` split on ``sep`` and their line numbers; a line with another
    field count or a non-integer where an integer belongs is a ValueError naming file and line."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (expected the MovieLens-100k files in {path.parent})")
    rows, numbers = [], []
    with open(path, encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = line.rstrip("\n").split(sep)
            if len(row) != n_fields:
                raise ValueError(f"{path}, line {n}: {len(row)} fields, expected {n_fields} separated by "
                                 f"{sep!r}: {line.rstrip()!r}")
            for i in int_fields:
                try:
                    int(row[i])
                except ValueError:
                    raise ValueError(f"{path}, line {n}: field {i + 1} is {row[i]!r}, expected an integer") from None
            rows.append(row)
            numbers.append(n)
    return rows, numbers


def read_movielens(data_dir: str | Path) -> MovieLensFiles:
    """Parse and check u.data, u.user and u.item in ``data_dir`` (pure: no features derived yet)."""
    d = Path(data_dir)
    read = {name: _read(d / name, sep, n, ints) for name, sep, n, ints in (U_DATA, U_USER, U_ITEM)}
    (data, data_lines), (urows, user_lines), (irows, item_lines) = read["u.data"], read["u.user"], read["u.item"]
    for r, n in zip(irows, item_lines, strict=True):
        try:
            _release_year(r[2])
        except ValueError:
            raise ValueError(f"{d / 'u.item'}, line {n}: release date {r[2]!r} does not end in a year") from None
    ratings = np.array([[int(x) for x in r] for r in data], dtype=np.int64).reshape(-1, 4)
    files = MovieLensFiles(ratings, urows, irows, {"u.data": data_lines, "u.user": user_lines, "u.item": item_lines})
    _check_references(files, d)
    return files


def _release_year(date: str) -> int:
    """The year a release date ("01-Jan-1995") ends in; 0 for a date shorter than a year (unknown)."""
    return int(date[-4:]) if len(date) >= 4 else 0


def movielens_columns(files: MovieLensFiles) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """(users, items) as the tables hold them: one row per u.user / u.item line, the spec's
    fields as Arrow columns (genres: the list of an item's genre ids)."""
    urows, irows = files.user_rows, files.item_rows
    users = {
        "user_id": [int(r[0]) for r in urows],
        "age_bucket": np.searchsorted(AGE_EDGES, [int(r[1]) for r in urows], side="right"),
        "gender": stable_id([r[2] for r in urows]),
        "occupation": stable_id([r[3] for r in urows]),
        "zip_prefix": stable_id([r[4][:2] for r in urows]),
    }
    items = {
        "item_id": [int(r[0]) for r in irows],
        "release_year": [_release_year(r[2]) for r in irows],
        "genres": [[g for g in range(N_GENRES) if r[5 + g] == "1"] for r in irows],
    }
    spec = movielens_spec()
    return arrow_columns(users, spec.user_fields), arrow_columns(items, spec.item_fields)


def movielens_features(files: MovieLensFiles) -> tuple[Columns, Columns]:
    """(users, items) as the model reads them, through the one Arrow -> model converter."""
    users, items = movielens_columns(files)
    spec = movielens_spec()
    return field_columns(users, spec.user_fields), field_columns(items, spec.item_fields)


def load_movielens(data_dir: str | Path) -> tuple[RankingData, np.ndarray]:
    """All ratings as RankingData, plus a boolean test mask (per-user last 20% by time)."""
    return movielens_data(read_movielens(data_dir))


def movielens_data(files: MovieLensFiles) -> tuple[RankingData, np.ndarray]:
    """``load_movielens`` on files already read: one row per rating, in u.data order."""
    ratings = files.ratings
    users, items = movielens_features(files)
    user_pos = _lookup(users["user_id"], ratings[:, 0], "user")
    item_pos = _lookup(items["item_id"], ratings[:, 1], "item")
    data = RankingData(
        users=users,
        items={"item_id": ratings[:, 1], "release_year": items["release_year"][item_pos],
               "genres": items["genres"][item_pos]},
        user_row=user_pos,
        label=rating_labels(ratings[:, 2]),
        time=ratings[:, 3],
    )
    return data, last_share_per_user(ratings[:, 0], (ratings[:, 3], ratings[:, 1]), TEST_SHARE)


def load_movielens_sequences(data_dir: str | Path, seq_len: int = 50) -> tuple[RankingData, np.ndarray]:
    """``load_movielens`` (the same rows, labels, times and test mask) with the fields of
    ``movielens_sequence_spec(seq_len)``: ``users`` gets one row per history snapshot (see
    ``history_snapshots``), so rows of one user may point at different ``users`` rows."""
    files = read_movielens(data_dir)
    data, test = movielens_data(files)
    snapshot, owner, lists = history_snapshots(files.ratings, data.user_row, test, seq_len)
    seq = field_columns(lists, movielens_sequence_spec(seq_len).sequence_fields, sequence=True)
    users = {**{k: v[owner] for k, v in data.users.items()}, **seq}
    return RankingData(users, data.items, snapshot, data.label, data.time), test


def history_snapshots(ratings: np.ndarray, user_row: np.ndarray, test: np.ndarray, seq_len: int
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, pa.Array]]:
    """Each rating's history, shared by the ratings that see the same one (a snapshot).

    ratings: (N, 4) user id, item id, rating, timestamp; user_row: (N,) the user's row in the
    user table; test: (N,) the test mask. Returns ``snapshot`` (N,) each rating's snapshot,
    ``owner`` (S,) each snapshot's user row, and ``hist_item_id`` / ``hist_rating`` as Arrow
    lists (S rows, oldest first, the last ``seq_len`` events ordered by (time, item id)).

    The rule, chosen so that no label leaks into a history:
    - only training-period ratings ever enter a history (a test rating is never input);
    - a training row sees the user's training ratings of strictly earlier UTC days: ratings
      of its own day may come after it (timestamps within a day are often one session's bulk
      entry), and a day cut is what a daily scoring job can compute; so all rows of one user
      and day share one snapshot;
    - a test row sees all of the user's training ratings: the history as of scoring the
      test period, which starts after every training rating of the user.
    """
    day = ratings[:, 3] // DAY
    span = int(day.max(initial=0)) + 2  # a cut past every day: the test rows'
    cut = np.where(test, span - 1, day)  # a history holds the training events of days < cut
    snap_key, snapshot = np.unique(user_row * span + cut, return_inverse=True)
    owner = snap_key // span

    events = np.flatnonzero(~test)
    events = events[np.lexsort((ratings[events, 1], ratings[events, 3], user_row[events]))]  # by user, time, item
    event_key = user_row[events] * span + day[events]  # nondecreasing
    end = np.searchsorted(event_key, snap_key)  # one past the snapshot's last event
    begin = np.maximum(np.searchsorted(event_key, owner * span), end - seq_len)  # its first kept event
    n = end - begin
    take = events[np.repeat(begin, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)]  # (sum n,)
    offsets = pa.array(np.r_[0, np.cumsum(n)].astype(np.int32))
    lists = {name: pa.ListArray.from_arrays(offsets, pa.array(ratings[take, col], SEQUENCE_ARROW_TYPE[kind].value_type))
             for name, col, kind in (("hist_item_id", 1, FieldKind.CATEGORICAL), ("hist_rating", 2, FieldKind.DENSE))}
    return snapshot.astype(np.int64), owner.astype(np.int64), lists


def rating_labels(rating: np.ndarray) -> np.ndarray:
    """The label of a rating: 1.0 if it is at least 4 stars, else 0.0 (float32)."""
    return (np.asarray(rating) >= 4).astype(np.float32)


def _lookup(keys: np.ndarray, queries: np.ndarray, what: str) -> np.ndarray:
    index = {int(k): i for i, k in enumerate(keys)}
    try:
        return np.array([index[int(q)] for q in queries], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"u.data references {what} {e.args[0]} missing from u.{what}") from None


def _check_references(files: MovieLensFiles, d: Path) -> None:
    """Every rating's user in u.user and item in u.item, else a ValueError naming the u.data line."""
    for col, what, rows in ((0, "user", files.user_rows), (1, "item", files.item_rows)):
        known = np.array([int(r[0]) for r in rows], dtype=np.int64)
        missing = np.flatnonzero(~np.isin(files.ratings[:, col], known))
        if len(missing):
            i = int(missing[0])
            raise ValueError(f"{d / 'u.data'}, line {files.lines['u.data'][i]}: {what} {int(files.ratings[i, col])} "
                             f"is missing from u.{what} ({len(missing)} such ratings)")
