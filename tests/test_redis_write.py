"""Redis written from the Spark executors holds byte for byte what Feast's own writer puts there."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from feast.infra.online_stores.redis import RedisOnlineStore
from pyspark.sql import functions as F

from feature_store.definitions import TableLocation, feast_objects
from feature_store.online_write import arrow_to_online_rows
from feature_store.redis_write import write_batches, writes_from_executors
from feature_store.store import feature_store
from jobs.contracts import USER_STATE, user_features_contract
from jobs.delta_io import ensure_table
from jobs.generate import synthetic_tables, to_arrow
from jobs.materialize import redis_error_of_workers, state_files, write_online, write_user_state, written_from
from ugsep.data.synthetic import synthetic_spec

DS = "2026-11-20"
USERS = 40
TASKS = 3
WIDTH = 1536  # the state width of the benchmark's D=128 model
# microseconds set, so the stored event time's nanos are compared too
EVENT_TS = dt.datetime(2026, 11, 20, 0, 0, 0, 123456, tzinfo=dt.UTC)


def _store(tmp_path, redis: str, name: str):
    """A warehouse of its own with the ugsep views applied, its online store at ``redis``."""
    warehouse = str(tmp_path / name)
    store = feature_store(warehouse, redis)
    store.apply(feast_objects(synthetic_spec(), f"{warehouse}/user_state",
                              TableLocation(path=f"{warehouse}/user_features"),
                              TableLocation(path=f"{warehouse}/item_features")))
    return store


def _users() -> dict[str, np.ndarray]:
    return synthetic_tables(DS, USERS, mean_cands=2)[0]


def _state_rows() -> pa.Table:
    """USERS users' user_state rows: event times on two days, one user's state and another's
    model_version null."""
    rng = np.random.default_rng(0)
    states = list(rng.standard_normal((USERS, WIDTH)).astype(np.float32))
    states[3] = None
    event = [EVENT_TS - dt.timedelta(days=i % 2) for i in range(USERS)]
    return pa.table({"user_id": pa.array(_users()["user_id"].astype(np.int64)),
                     "model_version": pa.array([f"ugsep-{i % 3:016x}" if i != 5 else None for i in range(USERS)]),
                     "state": pa.array(states, pa.list_(pa.float32())),
                     "created_at": pa.array([EVENT_TS + dt.timedelta(hours=5)] * USERS, pa.timestamp("us", "UTC")),
                     "event_ts": pa.array(event, pa.timestamp("us", "UTC"))})


def _frames(spark):
    """(user_state, user_features) DataFrames of USERS users in TASKS partitions, the columns
    typed as the Delta tables hold them."""
    contract = user_features_contract(synthetic_spec())
    feats = spark.createDataFrame(to_arrow(_users(), contract, updated_at=EVENT_TS).to_pandas())
    feats = feats.select(*(F.col(c).cast(t).alias(c) for c, t in contract.columns))
    return spark.createDataFrame(_state_rows().to_pandas()).repartition(TASKS), feats.repartition(TASKS)


def _hashes(redis: str, db: int) -> dict:
    """Every key of Redis db ``db`` with its HGETALL."""
    client = _client(redis, db)
    try:
        return {key: client.hgetall(key) for key in client.scan_iter()}
    finally:
        client.close()


def _client(redis: str, db: int = 0):
    import redis as redis_py

    host, port = redis.split(":")
    return redis_py.Redis(host=host, port=int(port), db=db)


@pytest.mark.spark
def test_executors_write_what_feasts_own_writer_writes(spark, redis_server, tmp_path):
    """The same rows go into three Redis dbs: from the executors (the job's path), through the
    driver, and by Feast's ``write_to_online_store``; every key and field of the three is equal,
    and Feast reads the executors' rows back."""
    state, feats = _frames(spark)
    ours, driver, feast = (_store(tmp_path, f"{redis_server},db={db}", name)
                           for db, name in ((1, "executors"), (2, "driver"), (3, "feast")))
    assert [written_from(ours, "user_state"), written_from(ours, "user_state", from_driver=True)] == \
        ["executors", "driver"]
    stats = _client(redis_server)
    before = stats.info("stats")["total_connections_received"]
    for view, df in (("user_state", state), ("user_features", feats)):
        assert write_online(df, ours, view, 1000, view) == USERS
    # one connection per task (two stages), whose only output is its row count
    assert stats.info("stats")["total_connections_received"] - before == 2 * TASKS
    stats.close()
    for view, df in (("user_state", state), ("user_features", feats)):
        assert write_online(df, driver, view, 16, view, from_driver=True) == USERS
        feast.write_to_online_store(view, df.toArrow().to_pandas())

    written = _hashes(redis_server, 1)
    assert len(written) == USERS and all(len(fields) == 2 + 1 + 5 + 1 for fields in written.values())
    assert written == _hashes(redis_server, 3)  # Feast's write_to_online_store
    assert written == _hashes(redis_server, 2)  # through the driver

    rows = state.toPandas().sort_values("user_id")
    read = ours.get_online_features(features=["user_state:model_version", "user_state:state"],
                                    entity_rows=[{"user_id": int(u)} for u in rows["user_id"]]).to_dict()
    assert read["model_version"] == rows["model_version"].tolist()
    for got, expected in zip(read["state"], rows["state"], strict=True):
        if expected is None:
            assert got is None
        else:
            np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expected)


@pytest.mark.spark
def test_executors_reading_the_days_files_write_what_spark_reading_them_writes(spark, redis_server, tmp_path):
    """materialize's user_state path: each task reads Parquet files of the Delta table itself;
    what lands equals the rows as Spark reads them (written from the executors), a null event
    time stamped with the start of the day on both paths."""
    rows = _state_rows().to_pandas()
    rows["event_ts"] = rows["event_ts"].astype(object).where(rows.index != 7, None)  # written before event_ts
    path = str(tmp_path / "user_state")
    ensure_table(spark, USER_STATE, path)
    df = spark.createDataFrame(rows).withColumn("ds", F.lit(DS)).repartition(TASKS)
    df.select(*USER_STATE.names).write.format("delta").mode("append").save(path)
    spark.createDataFrame(rows.head(3)).withColumn("ds", F.lit("2026-11-19")).select(*USER_STATE.names) \
        .write.format("delta").mode("append").save(path)  # another day: not written
    files, rows_of_spark = (_store(tmp_path, f"{redis_server},db={db}", name)
                            for db, name in ((4, "files"), (5, "spark")))
    assert state_files(spark, path, DS) is not None
    assert write_user_state(spark, path, DS, files) == (USERS, "executors")
    assert write_user_state(spark, path, DS, rows_of_spark, from_files=False) == (USERS, "executors")
    written = _hashes(redis_server, 4)
    assert len(written) == USERS and written == _hashes(redis_server, 5)
    read = files.get_online_features(features=["user_state:state"],
                                     entity_rows=[{"user_id": int(rows["user_id"][7])}]).to_dict()
    np.testing.assert_array_equal(np.asarray(read["state"][0], dtype=np.float32), rows["state"][7])


def test_a_key_ttl_is_set_as_feasts_writer_sets_it(redis_server, tmp_path):
    """Without Spark: the executors' writer, in pipelines of 7 rows, and Feast's own
    ``online_write_batch`` write the same rows with a key TTL into two dbs."""
    ours, feast = (_store(tmp_path, f"{redis_server},db={db}", name) for db, name in ((4, "ours"), (5, "feast")))
    for store in (ours, feast):
        store.config.online_store.key_ttl_seconds = 3600
    view = ours.get_feature_view("user_state")
    rows = _state_rows()
    counts = write_batches(rows.to_batches(max_chunksize=16), ours.config, view.to_proto().SerializeToString(), 7)
    assert [b.column(0).to_pylist() for b in counts] == [[USERS]]
    RedisOnlineStore().online_write_batch(feast.config, view, arrow_to_online_rows(rows, view), progress=None)

    assert _hashes(redis_server, 4) == _hashes(redis_server, 5) and len(_hashes(redis_server, 4)) == USERS
    for db in (4, 5):
        client = _client(redis_server, db)
        assert all(0 < client.ttl(key) <= 3600 for key in client.scan_iter())
        client.close()


def test_sqlite_is_written_from_the_driver(tmp_path):
    store = feature_store(str(tmp_path / "warehouse"))
    store.apply(feast_objects(synthetic_spec(), "user_state", TableLocation(path="f"), TableLocation(path="i")))
    assert not writes_from_executors(store.config, store.get_feature_view("user_state"))
    assert written_from(store, "user_state") == "driver"


def test_an_unreachable_redis_fails_the_job_as_on_the_driver():
    """A writer's Redis error reaches the driver as text in Spark's PythonException; rebuilt, the
    CLI reports it as it does for the driver's writer (exit 7, the address named)."""
    from cli.errors import explain

    def worker_failed(last_line: str) -> Exception:
        return Exception("An exception was thrown from the Python worker. Please see the stack trace below.\n"
                         "Traceback (most recent call last):\n  File \"feature_store/redis_write.py\", line 1\n"
                         f"{last_line}\n")

    refused = "Error 111 connecting to 127.0.0.1:1. Connection refused."
    error = redis_error_of_workers(worker_failed(f"redis.exceptions.ConnectionError: {refused}"))
    assert explain(error) == (7, f"the Redis online store at 127.0.0.1:1 is unreachable ({refused}); "
                                 "is redis-server running?")
    assert redis_error_of_workers(worker_failed("redis.exceptions.ResponseError: WRONGTYPE")) is None
    assert redis_error_of_workers(worker_failed("ValueError: the event time column event_ts has nulls")) is None
