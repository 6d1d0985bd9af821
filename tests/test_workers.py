"""The mapInArrow worker functions on plain Arrow batches, without Spark."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import make_model

from jobs.score_stream import user_rows_batch
from jobs.workers import encode_user_batches, rank_within_users, score_user_rows
from ugsep.checkpoint import save_checkpoint
from ugsep.data.arrow_columns import field_columns, padded_lists, to_arrow_column
from ugsep.data.ranking_data import batch_tensors
from ugsep.features import PAD_ID


def test_padded_lists_truncates_pads_and_handles_nulls():
    arr = pa.array([[1, 2, 3, 4], [], None, [7]], pa.list_(pa.int64())).slice(0, 4)
    out = padded_lists(arr, 3)
    assert out.tolist() == [[1, 2, 3], [PAD_ID] * 3, [PAD_ID] * 3, [7, PAD_ID, PAD_ID]]


def test_rank_within_users():
    user = torch.tensor([0, 0, 0, 1, 1, 2])
    score = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.3, 1.0])
    item = torch.tensor([10, 11, 12, 21, 20, 5])
    assert rank_within_users(user, score, item).tolist() == [3, 1, 2, 2, 1, 1]


def test_rank_within_users_matches_lexsort(rng):
    user = np.sort(rng.integers(0, 50, 2000))
    score = rng.integers(0, 20, 2000) / 20  # many ties
    item = rng.permutation(2000)
    order = np.lexsort((item, -score, user))
    expected = np.empty(2000, dtype=np.int64)
    for u in np.unique(user):
        members = order[user[order] == u]
        expected[members] = np.arange(1, len(members) + 1)
    got = rank_within_users(torch.from_numpy(user), torch.from_numpy(score).float(), torch.from_numpy(item))
    np.testing.assert_array_equal(got.numpy(), expected)


def _arrow(cols: dict) -> dict:
    return {k: to_arrow_column(v) for k, v in cols.items()}


def test_workers_match_model(tmp_path, small_day):
    model = make_model(seed=2)
    save_checkpoint(model, tmp_path)
    data = small_day.take(np.arange(len(small_day)))
    users = pa.RecordBatch.from_pydict(_arrow(data.users))
    states = list(encode_user_batches([users.slice(0, 20), users.slice(20)], str(tmp_path)))
    state_col = pa.concat_arrays([b.column("state") for b in states])
    assert len(state_col) == data.n_users
    # the user stage's model calls are cut to users_per_call, whatever size Spark's batches are
    per_call = list(encode_user_batches([users], str(tmp_path), users_per_call=7))
    assert [b.num_rows for b in per_call] == [min(7, data.n_users - s) for s in range(0, data.n_users, 7)]
    np.testing.assert_allclose(np.stack(pa.concat_arrays([b.column("state") for b in per_call]).to_pylist()),
                               np.stack(state_col.to_pylist()), rtol=0, atol=1e-5)

    # candidate rows in user order, the state on each user's first row: the score stage's stream;
    # Arrow batches may cut a user (user 0 has 1500 rows), the worker regroups whole users
    order = np.argsort(data.user_row, kind="stable")
    counts = np.bincount(data.user_row, minlength=data.n_users)
    items = {k: v[order] for k, v in data.items.items()}
    rows = user_rows_batch(data.users["user_id"], state_col, items, counts)
    cuts = [rows.slice(s, 700) for s in range(0, rows.num_rows, 700)]
    out = pa.Table.from_batches(list(score_user_rows(cuts, str(tmp_path))))
    assert out.num_rows == len(data)
    capped = pa.Table.from_batches(list(score_user_rows(cuts, str(tmp_path), max_candidates=50)))
    for col in ("user_id", "item_id"):  # capping candidates per model call changes only the call sizes
        np.testing.assert_array_equal(capped.column(col).to_numpy(), out.column(col).to_numpy())
    np.testing.assert_allclose(capped.column("score").to_numpy(), out.column("score").to_numpy(), rtol=0, atol=1e-6)

    u, i, idx, _ = batch_tensors(data, order)
    with torch.no_grad():
        expected = torch.sigmoid(model(u, i, idx)).numpy()
    np.testing.assert_allclose(out.column("score").to_numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out.column("item_id").to_numpy(), data.items["item_id"][order])

    # a missing state is computed on the fly from the user's fields
    user_cols = {f.name: to_arrow_column(data.users[f.name]) for f in model.spec.user_fields}
    nulled = pa.array([None if k % 3 == 0 else s for k, s in enumerate(state_col.to_pylist())],
                      pa.list_(pa.float32()))
    rows2 = user_rows_batch(data.users["user_id"], nulled, items, counts, extra=user_cols)
    out2 = pa.Table.from_batches(list(score_user_rows([rows2], str(tmp_path))))
    np.testing.assert_allclose(out2.column("score").to_numpy(), expected, rtol=0, atol=1e-5)

    # a state on any row but its user's first would shift every later user's state: refused
    states_by_row = rows.column("state").to_pylist()
    states_by_row[1] = states_by_row[0]  # user 0 has 1500 rows
    bad = rows.set_column(1, "state", pa.array(states_by_row, rows.schema.field("state").type))
    with pytest.raises(RuntimeError, match="malformed"):
        list(score_user_rows([bad], str(tmp_path)))


def test_workers_run_a_quantized_checkpoint(tmp_path, small_day):
    """A job config's ``model`` may be an `ugsep quantize` output: the workers load and run it."""
    from cli.model_commands import quantize_checkpoint
    from ugsep.checkpoint import load_checkpoint

    save_checkpoint(make_model(seed=2), tmp_path / "float")
    q = quantize_checkpoint(str(tmp_path / "float"), str(tmp_path / "q"), "w8a16")
    ckpt = str(tmp_path / "q")
    data = small_day.take(np.arange(len(small_day)))
    states = list(encode_user_batches([pa.RecordBatch.from_pydict(_arrow(data.users))], ckpt, users_per_call=16))
    order = np.argsort(data.user_row, kind="stable")
    items = {k: v[order] for k, v in data.items.items()}
    rows = user_rows_batch(data.users["user_id"], pa.concat_arrays([b.column("state") for b in states]), items,
                           np.bincount(data.user_row, minlength=data.n_users))
    out = pa.Table.from_batches(list(score_user_rows([rows], ckpt)))
    model, version = load_checkpoint(ckpt)
    assert version == q["model_version"] != q["base_model_version"]
    u, i, idx, _ = batch_tensors(data, order)
    with torch.no_grad():
        expected = torch.sigmoid(model(u, i, idx)).numpy()
    np.testing.assert_allclose(out.column("score").to_numpy(), expected, rtol=0, atol=1e-5)


def test_cached_model_follows_the_drivers_version(tmp_path):
    """A checkpoint retrained in place is loaded again for its new version; a worker that finds
    another version than the driver read refuses to score."""
    from jobs.workers import cached_model

    va = save_checkpoint(make_model(seed=1), tmp_path)
    a, _ = cached_model(str(tmp_path), "cpu", va)
    vb = save_checkpoint(make_model(seed=2), tmp_path)  # retrained in place
    assert vb != va
    b, got = cached_model(str(tmp_path), "cpu", vb)
    assert got == vb and b is not a
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    cached_model.cache_clear()
    with pytest.raises(RuntimeError, match=f"holds model_version {vb}, but this job labels its output {va}"):
        cached_model(str(tmp_path), "cpu", va)


def test_field_columns_layout(small_day):
    model = make_model()
    cols = field_columns(_arrow(small_day.users), model.spec.user_fields)
    np.testing.assert_array_equal(cols["interests"], small_day.users["interests"])
    assert cols["activity"].dtype == np.float32


def test_pick_device_prefers_the_assigned_gpu_then_cuda_then_cpu(monkeypatch):
    from jobs.workers import pick_device

    assert pick_device("cpu", ["0"]) == "cpu"  # an explicit setting wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", ["3"]) == "cuda:3"
    assert pick_device("auto", None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", ["3"]) == "cpu"


def test_whole_user_slices_cap_candidates_per_call():
    from jobs.score_stream import whole_user_slices

    counts = [30, 30, 5, 200, 1, 1]
    batch = pa.RecordBatch.from_pydict({"user_id": pa.array(np.repeat(np.arange(6), counts))})
    slices = list(whole_user_slices(batch, 60))
    assert [len(np.unique(s.column("user_id"))) for s in slices] == [2, 1, 1, 2]  # 30+30 | 5 | 200 alone | 1+1
    assert sum(s.num_rows for s in slices) == sum(counts)


def test_whole_users_regroups_batches_that_cut_a_user():
    from jobs.score_stream import whole_users

    ids = np.repeat([7, 3, 9, 4], [3, 5, 1, 4])
    batch = pa.RecordBatch.from_pydict({"user_id": pa.array(ids)})
    parts = list(whole_users([batch.slice(0, 4), batch.slice(4, 0), batch.slice(4, 2), batch.slice(6)]))
    assert [p.column("user_id").to_pylist() for p in parts] == [[7] * 3, [3] * 5 + [9], [4] * 4]


def test_user_split_across_the_stream_fails_loudly():
    from jobs.score_stream import check_unseen

    seen: set[int] = set()
    check_unseen(np.array([1, 2]), seen)
    with pytest.raises(RuntimeError, match=r"candidates of users \[2\] are not consecutive"):
        check_unseen(np.array([3, 2]), seen)
