"""Real Feast over the real Delta tables: apply, materialize, online lookups, online scoring."""

import calendar
import json

import numpy as np
import pytest
from conftest import make_model
from pyspark.sql import functions as F

from jobs.contracts import SCORES, USER_STATE
from jobs.generate import generate_tables, synthetic_tables
from jobs.materialize import materialize_day
from jobs.run_day import run_day
from serving.online_scorer import OnlineScorer, StateVersionError
from ugsep.checkpoint import save_checkpoint

pytestmark = pytest.mark.spark
DS = "2026-11-20"
USERS = 30


@pytest.fixture(scope="module")
def scored_day(spark, tmp_path_factory, model_dir):
    from jobs.config import JobConfig

    cfg = JobConfig(warehouse=str(tmp_path_factory.mktemp("fs") / "warehouse"), model=model_dir,
                    users_per_batch=16, partitions=2)
    generate_tables(spark, cfg, DS, USERS, mean_cands=8)
    run_day(spark, cfg, DS)
    state = spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS).toPandas()
    scores = spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == DS).toPandas()
    return cfg, state, scores


def _items_of(cfg_scores, user_id):
    """The user's candidates with their item features, as the batch job saw them."""
    users, items, cands = synthetic_tables(DS, USERS, mean_cands=8)
    mine = np.flatnonzero(cands["user_id"] == user_id)
    pos = np.searchsorted(items["item_id"], cands["item_id"][mine])
    cols = {k: items[k][pos] for k in ("item_id", "category", "tags", "price", "popularity")}
    cols["recency"] = cands["recency"][mine]
    return cols


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_online_store_serves_the_batch_state_and_scores(spark, scored_day, model_dir, store, request):
    cfg, state, scores = scored_day
    redis = request.getfixturevalue("redis_server") if store == "redis" else None
    with pytest.raises(ValueError, match="--batch-rows must be at least 1, got 0"):
        materialize_day(spark, cfg, DS, redis=redis, batch_rows=0)
    summary = materialize_day(spark, cfg, DS, redis=redis, batch_rows=7)  # several batches
    assert summary["user_state_rows"] == USERS
    assert json.loads(cfg.summary_path("materialize", DS).read_text()) == summary

    scorer = OnlineScorer(model_dir, cfg.warehouse, redis=redis)
    versions, flats = scorer.fetch_states(state["user_id"].tolist())
    assert set(versions) == {scorer.version}
    for flat, expected in zip(flats, state["state"], strict=True):
        np.testing.assert_array_equal(np.asarray(flat, dtype=np.float32), np.asarray(expected, dtype=np.float32))

    for user_id in scores["user_id"].unique()[:5]:
        out = scorer.score(int(user_id), _items_of(scores, user_id))
        assert out.state_source == "online_store"
        batch = scores[scores["user_id"] == user_id].set_index("item_id")["score"]
        np.testing.assert_allclose(out.scores, batch.loc[out.item_ids].to_numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_an_older_day_does_not_replace_newer_online_state(spark, scored_day, model_dir, store, request):
    """Backfilling a past day through the DAG materializes it after today's: skipped unless forced.
    Forced, it lands even in Redis, whose writer would drop rows older than the stored ones."""
    cfg, state, _ = scored_day
    redis = request.getfixturevalue("redis_server") if store == "redis" else None
    older = "2026-11-19"
    day = spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS)
    (day.withColumn("ds", F.lit(older)).withColumn("state", F.transform("state", lambda x: (x + 1.0).cast("float")))
     .write.format("delta").mode("overwrite").option("replaceWhere", f"ds = '{older}'")
     .save(cfg.table_path(USER_STATE)))
    scorer = OnlineScorer(model_dir, cfg.warehouse, redis=redis)
    users = state["user_id"].tolist()
    expected = np.stack([np.asarray(s, dtype=np.float32) for s in state["state"]])

    def online() -> np.ndarray:
        return np.stack([np.asarray(f, dtype=np.float32) for f in scorer.fetch_states(users)[1]])

    materialize_day(spark, cfg, DS, redis=redis)
    skipped = materialize_day(spark, cfg, older, redis=redis)
    assert skipped["skipped"] == f"user_state of ds={DS} is online" and skipped["user_state_rows"] == 0
    np.testing.assert_array_equal(online(), expected)
    assert materialize_day(spark, cfg, older, redis=redis, force=True)["user_state_rows"] == USERS
    np.testing.assert_array_equal(online(), expected + 1.0)
    materialize_day(spark, cfg, DS, redis=redis)  # the later day goes back over it
    np.testing.assert_array_equal(online(), expected)


def test_state_is_stamped_with_its_day_in_delta_and_online(spark, scored_day):
    """Event time = 00:00 UTC of ds (not the time of writing), so a backfilled day stays in the past."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feature_store.store import feature_store
    from jobs.materialize import warehouse_feast_objects

    cfg, state, _ = scored_day
    day = calendar.timegm((2026, 11, 20, 0, 0, 0))
    stamps = (spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS)
              .select(F.unix_timestamp("event_ts").alias("e"), F.unix_timestamp("created_at").alias("c")).collect())
    assert {r.e for r in stamps} == {day} and min(r.c for r in stamps) > day
    view = next(o for o in warehouse_feast_objects(cfg) if o.name == "user_state")
    assert (view.batch_source.timestamp_field, view.batch_source.created_timestamp_column) == ("event_ts", "created_at")

    materialize_day(spark, cfg, DS)
    store = feature_store(cfg.warehouse)
    keys = [EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(u))]) for u in state["user_id"][:3]]
    read = store._get_provider().online_read(store.config, store.get_feature_view("user_state"), keys)
    assert [calendar.timegm(ts.utctimetuple()) for ts, _ in read] == [day] * 3


def test_wrong_model_version_is_refused(spark, scored_day, tmp_path):
    cfg, _, scores = scored_day
    materialize_day(spark, cfg, DS)
    save_checkpoint(make_model(seed=123), tmp_path / "other")
    scorer = OnlineScorer(str(tmp_path / "other"), cfg.warehouse)
    user_id = int(scores["user_id"].iloc[0])
    with pytest.raises(StateVersionError, match=f"user {user_id} was written by model ugsep-"):
        scorer.score(user_id, _items_of(scores, user_id))


def test_missing_state_is_computed_from_online_features(spark, scored_day, model_dir, tmp_path):
    """A fresh online store holding every user's features but one user's state left out."""
    from feature_store.store import feature_store
    from jobs.contracts import USER_FEATURES
    from jobs.materialize import warehouse_feast_objects, write_online

    cfg, _, scores = scored_day
    store = feature_store(str(tmp_path))
    store.apply(warehouse_feast_objects(cfg))
    user_id = int(scores["user_id"].iloc[0])
    state = spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS)
    write_online(state.where(F.col("user_id") != user_id).drop("ds"), store, "user_state", 100, "state")
    write_online(spark.read.format("delta").load(cfg.table_path(USER_FEATURES)), store, "user_features", 100, "f")

    scorer = OnlineScorer(model_dir, str(tmp_path))
    out = scorer.score(user_id, _items_of(scores, user_id))
    assert out.state_source == "computed_from_features"
    batch = scores[scores["user_id"] == user_id].set_index("item_id")["score"]
    np.testing.assert_allclose(out.scores, batch.loc[out.item_ids].to_numpy(), rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match="neither user_state nor user_features"):
        scorer.score(10**9, _items_of(scores, user_id))
