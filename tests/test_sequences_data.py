"""Behaviour sequences: the spec's sequence side, the Arrow converter's sequence layout, and the
synthetic and MovieLens datasets with histories (no label leakage)."""

import json

import numpy as np
import pyarrow as pa
import pytest
from movielens_fixture import write_movielens_fixture, write_movielens_like

from ugsep.data.arrow_columns import arrow_columns, field_columns, right_aligned, sequence_arrow_columns
from ugsep.data.datasets import load_dataset
from ugsep.data.movielens import DAY, load_movielens, load_movielens_sequences, movielens_sequence_spec
from ugsep.data.synthetic import (
    generate_day,
    generate_sequence_day,
    synthetic_sequence_dataset,
    synthetic_sequence_spec,
    synthetic_spec,
)
from ugsep.features import PAD_ID, FeatureSpec, Field, FieldKind
from ugsep.metrics import auc

ITEM = Field("item_id", "categorical", buckets=100, dim=8)
USER = Field("user_id", "categorical")


def _spec(*seq, item=ITEM, user=USER):
    return FeatureSpec((user,), (item,), sequence_fields=seq)


def _hist(max_len=5, **kw):
    return Field("hist_item_id", "categorical", buckets=100, dim=8, max_len=max_len, **kw)


# --- the spec ---------------------------------------------------------------------------------

def test_sequence_spec_roundtrip_and_length():
    spec = _spec(_hist(shares="item_id"), Field("hist_rating", "dense", max_len=5))
    assert spec.sequence_len == 5 and _spec().sequence_len == 0
    d = spec.to_dict()
    assert [f["name"] for f in d["sequence_fields"]] == ["hist_item_id", "hist_rating"]
    assert d["sequence_fields"][0]["shares"] == "item_id" and "shares" not in d["sequence_fields"][1]
    assert FeatureSpec.from_dict(d) == spec


def test_spec_without_sequences_keeps_its_old_form():
    """No sequence_fields key and no shares key: specs saved before them hash to the same version."""
    d = json.loads(json.dumps(FeatureSpec((Field("a", "categorical"),), (Field("b", "dense"),)).to_dict()))
    assert d == {"user_fields": [{"name": "a", "kind": "categorical", "buckets": 1000, "dim": 16, "max_len": 1}],
                 "item_fields": [{"name": "b", "kind": "dense", "buckets": 1000, "dim": 16, "max_len": 1}],
                 "dense_policy": "clamp"}


@pytest.mark.parametrize("seq, match", [
    ((Field("h", "multi", max_len=5),), "sequence field 'h' is multi"),
    ((Field("r", "dense", max_len=5), _hist()), "first sequence field 'r'.*categorical, not dense"),
    ((_hist(5), Field("r", "dense", max_len=7)), "one length.*hist_item_id=5, r=7"),
    ((_hist(shares="price"),), "shares 'price', which is not an item field"),
    ((_hist(shares="user_id"),), "shares 'user_id', which is not an item field"),
    ((Field("hist_item_id", "categorical", buckets=99, dim=8, max_len=5, shares="item_id"),),
     "'hist_item_id' shares item field 'item_id'.*buckets 99 vs 100"),
    ((Field("hist_item_id", "categorical", buckets=100, dim=4, max_len=5, shares="item_id"),), "dim 4 vs 8"),
    ((_hist(), Field("r", "dense", buckets=100, dim=8, max_len=5, shares="item_id")), "kind dense vs categorical"),
    ((_hist(), Field("user_id", "categorical", max_len=5)), "twice.*user_id"),
])
def test_bad_sequence_fields_are_named(seq, match):
    with pytest.raises(ValueError, match=match):
        _spec(*seq)


def test_shares_only_on_sequence_fields_of_a_categorical_item():
    with pytest.raises(ValueError, match=r"field 'user_id' \(user_fields\) shares 'item_id'"):
        _spec(user=Field("user_id", "categorical", shares="item_id"))
    with pytest.raises(ValueError, match="kind categorical vs dense"):
        _spec(_hist(shares="item_id"), item=Field("item_id", "dense", buckets=100, dim=8))


# --- the Arrow converter ----------------------------------------------------------------------

SEQ = (Field("hist_item_id", "categorical", max_len=3), Field("hist_rating", "dense", max_len=3))


def test_sequence_columns_right_aligned_keep_the_most_recent():
    values = {"hist_item_id": [[1, 2, 3, 4], [], None, [7], [8, 9, 10]],
              "hist_rating": [[1.0, 2.0, 3.0, 4.0], [], None, [0.0], [5.0, 0.5, 2.0]]}
    cols = arrow_columns(values, SEQ, sequence=True)
    assert cols["hist_item_id"].type == pa.list_(pa.int64()) and cols["hist_rating"].type == pa.list_(pa.float64())
    out = field_columns(cols, SEQ, sequence=True)
    assert out["hist_item_id"].dtype == np.int64 and out["hist_rating"].dtype == np.float32
    assert out["hist_item_id"].tolist() == [[2, 3, 4], [PAD_ID] * 3, [PAD_ID] * 3, [PAD_ID, PAD_ID, 7], [8, 9, 10]]
    assert out["hist_rating"].tolist() == [[2, 3, 4], [0] * 3, [0] * 3, [0, 0, 0], [5, 0.5, 2]]
    sliced = field_columns({k: v.slice(1) for k, v in cols.items()}, SEQ, sequence=True)  # with an offset
    np.testing.assert_array_equal(sliced["hist_item_id"], out["hist_item_id"][1:])


def test_sequence_columns_round_trip(rng):
    length = rng.integers(0, 4, 50)
    ids = [rng.integers(0, 10**12, n).tolist() for n in length]
    stars = [rng.choice([0.0, 1.5, 5.0], n).tolist() for n in length]  # a real 0.0 is not padding
    arrays = arrow_columns({"hist_item_id": ids, "hist_rating": stars}, SEQ, sequence=True)
    back = sequence_arrow_columns(field_columns(arrays, SEQ, sequence=True), SEQ)
    assert back["hist_item_id"].to_pylist() == ids and back["hist_rating"].to_pylist() == stars
    assert back["hist_item_id"].type == arrays["hist_item_id"].type


def test_sequence_null_events_and_unequal_lists():
    assert np.isnan(right_aligned(pa.array([[None, 2.0]], pa.list_(pa.float64())), 3, FieldKind.DENSE)[0, 1])
    cols = arrow_columns({"hist_item_id": [[1, 2], [3]], "hist_rating": [[1.0, 2.0], [3.0, 4.0]]}, SEQ, sequence=True)
    with pytest.raises(ValueError, match="'hist_rating' has another event count than .*'hist_item_id' in 1 rows"):
        field_columns(cols, SEQ, sequence=True)
    with pytest.raises(ValueError, match="does not fit its kind"):
        arrow_columns({"hist_item_id": [["x"]], "hist_rating": [[1.0]]}, SEQ, sequence=True)


# --- synthetic --------------------------------------------------------------------------------

def test_synthetic_sequences_layout():
    spec = synthetic_sequence_spec(20)
    assert spec.sequence_len == 20 and spec.sequence_fields[0].shares == "item_id"
    assert spec.user_fields == synthetic_spec().user_fields and spec.sequence_fields[0].buckets == 20_000
    day = generate_sequence_day(400, seed=2, seq_len=20)
    hist, cat = day.users["hist_item_id"], day.users["hist_category"]
    assert hist.shape == cat.shape == (400, 20) and hist.dtype == np.int64
    valid = hist != PAD_ID
    assert (np.diff(valid.astype(int), axis=1) >= 0).all()  # right-aligned: padding only before events
    length = valid.sum(1)
    assert (length == 0).any() and (length == 20).any() and len(np.unique(length)) > 10
    np.testing.assert_array_equal(cat[valid], day.items["category"][hist[valid]])
    assert (cat[~valid] == PAD_ID).all()


def test_synthetic_plain_data_unchanged_and_sequence_data_deterministic():
    plain, seq = generate_day(300, seed=4), generate_sequence_day(300, seed=4)
    for part in ("users", "items", "candidates"):
        for k, v in getattr(plain, part).items():
            if (part, k) not in (("candidates", "label"), ("candidates", "true_logit")):
                np.testing.assert_array_equal(getattr(seq, part)[k], v)
    assert not np.array_equal(seq.candidates["label"], plain.candidates["label"])
    np.testing.assert_allclose(seq.candidates["true_logit"] - seq.candidates["true_sequence"],
                               plain.candidates["true_logit"], atol=1e-5)
    again = synthetic_sequence_dataset(300, seed=4)
    data = synthetic_sequence_dataset(300, seed=4)
    for k in data.users:
        np.testing.assert_array_equal(data.users[k], again.users[k])
    np.testing.assert_array_equal(data.label, seq.candidates["label"])
    spec = synthetic_sequence_spec()
    assert set(data.users) == {f.name for f in spec.user_fields + spec.sequence_fields}


def test_planted_sequence_term_matters():
    """The oracle that knows the recent events is visibly better than one that does not."""
    c = generate_sequence_day(3000, seed=1).candidates
    assert auc(c["label"], c["true_logit"]) - auc(c["label"], c["true_logit"] - c["true_sequence"]) > 0.03


# --- MovieLens --------------------------------------------------------------------------------

def _ratings(d):
    return np.loadtxt(d / "u.data", dtype=np.int64, ndmin=2)  # (N, 4) user, item, rating, time, u.data order


def _histories(data):
    """Per row: the list of (item, rating) in its history, oldest first."""
    hist, stars = data.users["hist_item_id"][data.user_row], data.users["hist_rating"][data.user_row]
    return [list(zip(h[h != PAD_ID].tolist(), s[h != PAD_ID].tolist(), strict=True))
            for h, s in zip(hist, stars, strict=True)]


def test_movielens_histories_match_the_rule(tmp_path):
    """Against a row-by-row reference: training rows see earlier days' training ratings, test
    rows all training ratings, the last L by (time, item id)."""
    write_movielens_fixture(tmp_path, n_users=12, n_items=40, per_user=20, seed=3)
    seq_len = 6
    plain, test = load_movielens(tmp_path)
    data, test_seq = load_movielens_sequences(tmp_path, seq_len)
    np.testing.assert_array_equal(test_seq, test)
    np.testing.assert_array_equal(data.label, plain.label)
    np.testing.assert_array_equal(data.time, plain.time)
    np.testing.assert_array_equal(data.user_ids(), plain.user_ids())
    for k in plain.items:
        np.testing.assert_array_equal(data.items[k], plain.items[k])
    for f in movielens_sequence_spec(seq_len).sequence_fields:
        assert data.users[f.name].shape == (data.n_users, seq_len)

    r = _ratings(tmp_path)
    got = _histories(data)
    for i in range(len(r)):
        mine = (r[:, 0] == r[i, 0]) & ~test
        if not test[i]:
            mine &= r[:, 3] // DAY < r[i, 3] // DAY
        rows = np.flatnonzero(mine)
        rows = rows[np.lexsort((r[rows, 1], r[rows, 3]))][-seq_len:]
        assert got[i] == [(int(r[j, 1]), float(r[j, 2])) for j in rows], i
    assert any(len(h) == seq_len for h in got) and any(len(h) == 0 for h in got)

    # one users row per (user, day) of training rows, one per user for its test rows
    train_snaps = {(u, t // DAY) for u, t, is_test in zip(r[:, 0], r[:, 3], test, strict=True) if not is_test}
    assert data.n_users == len(train_snaps) + len(np.unique(r[test, 0]))
    assert len(np.unique(data.user_row[test])) == len(np.unique(r[test, 0]))


def test_movielens_like_histories_never_leak(tmp_path):
    """At MovieLens-100k size: no history holds a test-period rating; a training row's holds only
    ratings of earlier days; a test row's is the user's last L training ratings."""
    write_movielens_like(tmp_path, seed=1)
    seq_len = 50
    data, test = load_movielens_sequences(tmp_path, seq_len)
    r = _ratings(tmp_path)
    assert len(data) == len(r)
    key = r[:, 0] * 10**6 + r[:, 1]  # (user, item) is unique in MovieLens
    order = np.argsort(key)
    hist = data.users["hist_item_id"][data.user_row]  # (N, L)
    valid = hist != PAD_ID
    row = np.broadcast_to(np.arange(len(r))[:, None], hist.shape)[valid]
    event = order[np.searchsorted(key[order], r[row, 0] * 10**6 + hist[valid])]  # the rating each slot holds
    assert (key[event] == r[row, 0] * 10**6 + hist[valid]).all()
    assert not test[event].any()  # never a test-period rating
    train_row = ~test[row]
    assert (r[event[train_row], 3] // DAY < r[row[train_row], 3] // DAY).all()  # training: earlier days only
    np.testing.assert_array_equal(data.users["hist_rating"][data.user_row][valid], r[event, 2])
    # test rows: exactly the user's training ratings, the last L
    n_train = np.bincount(r[~test, 0], minlength=r[:, 0].max() + 1)
    np.testing.assert_array_equal(valid[test].sum(1), np.minimum(n_train[r[test, 0]], seq_len))
    assert (valid.sum(1) == seq_len).any() and (valid.sum(1) == 0).any()


# --- load_dataset -----------------------------------------------------------------------------

def test_load_dataset_with_sequences(tmp_path):
    write_movielens_fixture(tmp_path, n_users=6, per_user=10)
    spec, train, held = load_dataset("movielens-100k", str(tmp_path), sequences=True)
    plain_spec, plain_train, plain_held = load_dataset("movielens-100k", str(tmp_path))
    assert spec.sequence_len == 50 and not plain_spec.sequence_fields
    assert spec.user_fields == plain_spec.user_fields and spec.item_fields == plain_spec.item_fields
    assert len(train) == len(plain_train) == 48 and len(held) == len(plain_held) == 12
    np.testing.assert_array_equal(held.time, plain_held.time)
    assert "hist_item_id" in held.users and "hist_item_id" not in plain_held.users

    spec, train, held = load_dataset("synthetic", sequences=True)
    _, plain_train, plain_held = load_dataset("synthetic")
    assert spec == synthetic_sequence_spec() and len(train) == len(plain_train) and len(held) == len(plain_held)
    np.testing.assert_array_equal(held.items["item_id"], plain_held.items["item_id"])
    assert train.users["hist_item_id"].shape == (train.n_users, 50)


def test_with_history_adds_a_shared_event_id_then_the_side_fields():
    from ugsep.data.synthetic import synthetic_spec
    from ugsep.features import Field

    spec = synthetic_spec().with_history(7, Field("hist_age", "dense"))
    ids, age = spec.sequence_fields
    item = spec.item_fields[0]
    assert (ids.name, ids.shares, ids.buckets, ids.dim, ids.max_len) == ("hist_item_id", "item_id", item.buckets,
                                                                         item.dim, 7)
    assert (age.name, age.max_len) == ("hist_age", 7) and spec.sequence_len == 7
    with pytest.raises(ValueError, match="'category_id' is not an item field"):
        synthetic_spec().with_history(7, item="category_id")
