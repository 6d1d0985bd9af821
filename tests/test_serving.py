"""The online read path and the scoring service: real Feast (SQLite), a real redis-server, and
``ugsep serve`` started in its own process, answering real HTTP requests over loopback."""

import asyncio
import functools
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import free_port, start_redis_server
from feast import ValueType
from feast.type_map import python_values_to_proto_values
from hypothesis import example, given, settings
from hypothesis import strategies as st
from online_fixture import OTHER_VERSION, candidate_records, fill_online_store

from feature_store.online_write import write_arrow
from feature_store.store import feature_store
from jobs.generate import synthetic_tables
from serving.batching import BatchSettings, MicroBatcher
from serving.online_scorer import OnlineScorer, StateVersionError, UnknownUserError, native_bf16_cpu
from serving.request import ScoreRequest, candidate_columns
from serving.state_reader import FeastStateReader, float_list, state_reader
from ugsep.checkpoint import load_checkpoint
from ugsep.data.ranking_data import to_tensors

ROOT = Path(__file__).resolve().parents[1]
DS = "2026-11-20"
USERS = 24
STATE_ROWS = np.arange(USERS) % 2 == 0  # even rows have stored state, odd rows only features
OTHER_ROW, NULL_ROW = 2, 4  # state of another model version; a null state (features only, then)
UNKNOWN = 10**9  # neither state nor features
BF16_SCORE_ATOL = 0.02  # |bf16 - float32| per probability (docs/operations.md#online-scoring-service)


@pytest.fixture(scope="module")
def day():
    users, items, _ = synthetic_tables(DS, USERS, mean_cands=5)
    return users, items


def _fill(warehouse: str, model_dir: str, users, redis: str | None) -> np.ndarray:
    flat = fill_online_store(warehouse, model_dir, users, STATE_ROWS, redis=redis,
                             other_version=np.arange(USERS) == OTHER_ROW)
    store = feature_store(warehouse, redis)
    null_state = pa.table({"user_id": pa.array([int(users["user_id"][NULL_ROW])], pa.int64()),
                           "model_version": pa.array([None], pa.string()),
                           "state": pa.array([None], pa.list_(pa.float32())),
                           "created_at": pa.array([0], pa.timestamp("us", tz="UTC")),
                           "event_ts": pa.array([0], pa.timestamp("us", tz="UTC"))})
    write_arrow(store, "user_state", null_state)
    return flat


@pytest.fixture(scope="module")
def redis():
    """This module's redis-server: ``proc`` (a test may stop and restart it) and ``address``."""
    proc, address = start_redis_server()
    holder = SimpleNamespace(proc=proc, address=address)
    yield holder
    holder.proc.terminate()
    holder.proc.wait(10)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, model_dir, day, redis):
    """store name -> (warehouse, redis address or None, every user's flat state)."""
    users, _ = day
    out = {}
    for name, address in (("sqlite", None), ("redis", redis.address)):
        warehouse = str(tmp_path_factory.mktemp(f"serve-{name}") / "warehouse")
        out[name] = (warehouse, address, _fill(warehouse, model_dir, users, address))
    return out


def _request(day, user_row: int, n: int, seed: int) -> dict:
    users, items = day
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(items["item_id"]), n)
    return {"user_id": int(users["user_id"][user_row]),
            "candidates": candidate_records(items, {"recency": rng.exponential(24.0, n)}, rows)}


@functools.cache
def _model(model_dir: str):
    return load_checkpoint(model_dir)[0]


def _expected(model_dir: str, day, doc: dict) -> np.ndarray:
    """The model's own split scores of a request, the user encoded from its features."""
    users, _ = day
    model = _model(model_dir)
    row = int(np.flatnonzero(users["user_id"] == doc["user_id"])[0])
    items = to_tensors(candidate_columns(doc["candidates"], model.spec))
    with torch.inference_mode():
        state = model.encode_users(to_tensors({f.name: users[f.name][row:row + 1] for f in model.spec.user_fields}))
        return torch.sigmoid(model.score_groups(state, items, torch.zeros(len(doc["candidates"]), dtype=torch.long))
                             ).numpy()


# ----------------------------------------------------------------------------- the lean read
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_lean_read_returns_exactly_what_feast_returns(stores, model_dir, day, store):
    warehouse, redis, flat = stores[store]
    users, _ = day
    fs = feature_store(warehouse, redis)
    lean, feast = state_reader(fs, "lean"), FeastStateReader(fs)
    assert lean.kind == "lean" and type(lean).__name__.lower().startswith(store)
    ids = [*users["user_id"].tolist(), UNKNOWN, int(users["user_id"][0])]  # an unknown user, a repeated one
    lean_versions, lean_states = lean.read(ids)
    raw = fs.get_online_features(features=fs.get_feature_service("user_state_service"),
                                 entity_rows=[{"user_id": u} for u in ids]).to_dict()
    assert lean_versions == raw["model_version"] == feast.read(ids)[0]
    for i, (ours, theirs) in enumerate(zip(lean_states, raw["state"], strict=True)):
        if theirs is None:
            assert ours is None, i
        else:
            assert ours.dtype == np.float32 and ours.tolist() == theirs, i  # every float, bit for bit
    _, version = load_checkpoint(model_dir)
    for row in range(USERS):  # and it is the state that was written
        stored = STATE_ROWS[row] and row != NULL_ROW
        assert lean_versions[row] == (None if not stored else OTHER_VERSION if row == OTHER_ROW else version)
        if stored:
            np.testing.assert_array_equal(lean_states[row], flat[row])


def test_float_list_reads_every_encoding_of_a_float_list():
    """Packed (what Feast and our writer write) is viewed in place; anything else goes through protobuf."""
    from feast.protos.feast.types.Value_pb2 import Value

    values = np.array([0.5, -3e38, 1e-45, 7.25], dtype=np.float32)
    (packed,) = python_values_to_proto_values([values.tolist()], ValueType.FLOAT_LIST)
    np.testing.assert_array_equal(float_list(packed.SerializeToString()), values)
    inner = b"".join(b"\x0d" + v.tobytes() for v in values)  # the same floats, not packed
    unpacked = b"\x82\x01" + bytes([len(inner)]) + inner
    assert list(Value.FromString(unpacked).float_list_val.val) == values.tolist()
    np.testing.assert_array_equal(float_list(unpacked), values)
    assert float_list(b"") is None and float_list(None) is None


# ----------------------------------------------------------------------------- micro-batching
def test_concurrent_requests_share_one_model_call_and_fail_alone(stores, model_dir, day):
    """Requests queued together are scored in one call, each exactly as when scored alone; a
    request of an unknown user or of another model version's state fails alone."""
    warehouse, _, _ = stores["sqlite"]
    scorer = OnlineScorer(model_dir, warehouse)
    docs = [_request(day, row, n, seed=row) for row, n in ((0, 7), (1, 1), (6, 30), (3, 12), (6, 5))]
    docs += [{**docs[0], "user_id": UNKNOWN}, {**docs[0], "user_id": int(day[0]["user_id"][OTHER_ROW])}]
    reqs = [ScoreRequest(d["user_id"], [c["item_id"] for c in d["candidates"]],
                         candidate_columns(d["candidates"], scorer.spec)) for d in docs]
    alone = [scorer.score_many([r])[0] for r in reqs]

    async def together(settings: BatchSettings):
        batcher = MicroBatcher(scorer.score_many, settings)
        batcher.start()
        try:
            out = await asyncio.gather(*(batcher.submit(r, len(r)) for r in reqs), return_exceptions=True)
        finally:
            await batcher.stop()
        return out, batcher.stats

    out, stats = asyncio.run(together(BatchSettings(window_ms=50)))
    assert (stats.requests, stats.model_calls, stats.largest_batch) == (len(reqs), 1, len(reqs))
    for i, (a, b) in enumerate(zip(out, alone, strict=True)):
        if i < 5:
            assert a.state_source == b.state_source == ("online_store" if STATE_ROWS[[0, 1, 6, 3, 6][i]]
                                                        else "computed_from_features")
            assert a.item_ids == b.item_ids
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
            np.testing.assert_allclose(a.scores, _expected(model_dir, day, docs[i]), rtol=0, atol=1e-5)
    assert isinstance(out[5], UnknownUserError) and isinstance(alone[5], UnknownUserError)
    assert isinstance(out[6], StateVersionError) and f"written by model {OTHER_VERSION}" in str(out[6])

    rollout = OnlineScorer(model_dir, warehouse, other_version="compute").score_many(reqs[6:])[0]
    assert rollout.state_source == "computed_from_features"  # the other version's state is not read
    np.testing.assert_allclose(rollout.scores, _expected(model_dir, day, docs[6]), rtol=0, atol=1e-5)

    _, stats = asyncio.run(together(BatchSettings(enabled=False)))
    assert (stats.model_calls, stats.largest_batch) == (len(reqs), 1)
    # the candidate cap splits a batch (whole requests only; a request over the cap goes alone)
    _, stats = asyncio.run(together(BatchSettings(window_ms=50, max_candidates=20)))
    assert stats.batch_sizes == {2: 3, 1: 1}  # [7, 1] [30] [12, 5] [7, 7]


# ----------------------------------------------------------------------------- the service
def _launch(config: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    """`ugsep serve` in its own process, as an operator starts it: (process, URL, its log)."""
    port = free_port()
    log = config.with_name(f"serve_{port}.log")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--config", str(config), "--port", str(port),
                             *args], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"ugsep serve was not ready in time: {log.read_text()}")


def _start(config: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc, url, log = _launch(config, *args)
    _wait_ready(proc, url, log)
    return proc, url


@pytest.fixture(scope="module")
def services(stores, model_dir, tmp_path_factory):
    """store name -> URL of `ugsep serve` over that store (small limits, to test them cheaply)."""
    launched = {}
    try:
        for name, (warehouse, redis, _) in stores.items():  # both start at once, then both are awaited
            config = tmp_path_factory.mktemp(f"cfg-{name}") / "job.toml"
            config.write_text(f'warehouse = "{warehouse}"\nmodel = "{model_dir}"\n')
            launched[name] = _launch(config, *(["--redis", redis] if redis else []), "--max-candidates", "64",
                                     "--max-body-bytes", "16000", "--batch-window-ms", "5")
            if name == "sqlite":  # the same store served in bfloat16
                launched["sqlite-bf16"] = _launch(config, "--dtype", "bfloat16")
        for proc, url, log in launched.values():
            _wait_ready(proc, url, log)
        yield {name: url for name, (_, url, _) in launched.items()}
    finally:
        for proc, _, _ in launched.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, log in launched.values():  # a clean shutdown (uvicorn ends by the signal it handled)
            assert proc.wait(30) in (0, -signal.SIGTERM) and "ugsep serve: stopped" in log.read_text()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_service_scores_stored_and_computed_users(services, model_dir, day, store):
    url = services[store]
    ready = httpx.get(f"{url}/ready").json()
    _, version = load_checkpoint(model_dir)
    assert ready == {"status": "ready", "model_version": version, "online_store": store, "read": "lean",
                     "dtype": "float32"}
    for row, source in ((0, "online_store"), (1, "computed_from_features"), (NULL_ROW, "computed_from_features")):
        doc = _request(day, row, 40, seed=row)
        r = httpx.post(f"{url}/score", json=doc)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["user_id"], out["model_version"], out["state_source"]) == (doc["user_id"], version, source)
        assert out["item_ids"] == [c["item_id"] for c in doc["candidates"]]  # the request's order
        np.testing.assert_allclose(out["scores"], _expected(model_dir, day, doc), rtol=0, atol=1e-5)

    async def concurrently(docs):
        async with httpx.AsyncClient(base_url=url) as client:
            return await asyncio.gather(*(client.post("/score", json=d) for d in docs))

    docs = [_request(day, row, 10 + row, seed=100 + row) for row in range(10) if row != OTHER_ROW]
    for doc, r in zip(docs, asyncio.run(concurrently(docs)), strict=True):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["scores"], _expected(model_dir, day, doc), rtol=0, atol=1e-5)
    stats = httpx.get(f"{url}/stats").json()
    assert stats["requests"] >= 11 and stats["batching"]["window_ms"] == 5.0


def test_a_bfloat16_service_scores_within_bf16_rounding_of_float32(services, model_dir, day):
    """--dtype bfloat16: the stored float32 state is cast on read; scores of stored and computed
    users stay within the documented bound of the float32 model's, and differ from them (the
    products really ran in bf16)."""
    url = services["sqlite-bf16"]
    assert httpx.get(f"{url}/ready").json()["dtype"] == "bfloat16"
    for row, source in ((0, "online_store"), (1, "computed_from_features")):
        doc = _request(day, row, 200, seed=7 + row)
        r = httpx.post(f"{url}/score", json=doc)
        assert r.status_code == 200, r.text
        out = r.json()
        expected = _expected(model_dir, day, doc)
        assert out["state_source"] == source
        np.testing.assert_allclose(out["scores"], expected, rtol=0, atol=BF16_SCORE_ATOL)
        assert np.abs(np.asarray(out["scores"]) - expected).max() > 1e-6


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16_cpu(str(info)) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert native_bf16_cpu(str(info)) is False
    assert native_bf16_cpu(str(tmp_path / "missing")) is None
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # an Arm CPU: no x86 flags
    assert native_bf16_cpu(str(info)) is None


WIDE_INTS = st.integers(min_value=-(2**65), max_value=2**65)
NUMBERS = st.one_of(WIDE_INTS, st.floats(), st.booleans())


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["categorical", "dense", "multi"]), st.one_of(
    st.lists(st.one_of(NUMBERS, st.none(), st.text(max_size=2), st.lists(NUMBERS, max_size=3)), max_size=6),
    st.lists(NUMBERS, max_size=6),  # columns of numbers only, where a whole-column test is tempted
    st.lists(st.one_of(st.none(), st.lists(NUMBERS, max_size=3)), max_size=6)))
@example("dense", [2**64])
@example("dense", [1.5, float("nan")])
@example("categorical", [1, True])
@example("categorical", [2**63])
@example("multi", [[1], None, [2**64]])
@example("multi", [[1.0]])
def test_the_whole_column_check_agrees_with_the_value_by_value_one(kind, values):
    """The fast column test passes a column only where every value passes the per-value test,
    and a column the per-value test passes is accepted either way."""
    import serving.request as rq
    from ugsep.features import Field

    f = Field("x", kind, buckets=7, dim=3, max_len=4) if kind != "dense" else Field("x", kind)

    def per_value_verdict() -> bool:
        try:
            rq._check_values(values, f, "c")
            return True
        except rq.RequestError:
            return False

    good = per_value_verdict()
    assert not rq._column_fits(values, f) or good
    if good:
        rq._check_column(values, f, "c")


def test_only_long_integer_literals_leave_the_fast_json_reader():
    """orjson reads an integer past 64 bits as a float, so such a body goes to ``json``; a float
    with a long fraction (small values print many digits) stays with orjson."""
    from serving.request import _decode, long_integer_literal

    for body in (b'{"popularity": 0.0007486097165383399}', b'[1.00000000000000000000001e5, 12345678901234567890.5]',
                 b'[12345678901234567890e2, 12345678901234567890E2]'):
        assert not long_integer_literal(body), body
    for body in (b'{"item_id": 18446744073709551616}', b'[-18446744073709551616]', b'[1,99999999999999999999]',
                 b'18446744073709551616', b'[0.5, 18446744073709551616]'):
        assert long_integer_literal(body), body
    assert _decode(b'[18446744073709551616, 0.0007486097165383399]') == [2**64, 0.0007486097165383399]


def test_bad_requests_get_a_4xx_naming_the_input_and_the_service_goes_on(services, day):
    url = services["sqlite"]
    good = _request(day, 0, 3, seed=1)
    c0 = good["candidates"][0]
    cases = [
        (b"{not json", 400, "body", "expected a JSON object, found invalid JSON"),
        (b"[1, 2]", 422, "body", "expected a JSON object"),
        (b"[" * 15000, 400, "body", "found invalid JSON (RecursionError"),
        (b'{"user_id": 1, "candidates": [\xff]}', 400, "body", "found invalid JSON"),
        ({"candidates": good["candidates"]}, 422, "user_id", "user_id: missing"),
        ({**good, "user_id": "42"}, 422, "user_id", 'expected an integer user id, found "42"'),
        ({**good, "user_id": True}, 422, "user_id", "found true"),
        ({**good, "candidates": []}, 422, "candidates", "expected a non-empty list"),
        ({**good, "candidates": {"item_id": 1}}, 422, "candidates", "expected a non-empty list"),
        ({**good, "candidates": [c0, 5]}, 422, "candidates[1]", "expected an object of candidate fields, found 5"),
        ({**good, "candidates": [c0, {k: v for k, v in c0.items() if k != "price"}]}, 422, "candidates[1].price",
         "missing; every candidate needs the model's dense field 'price'"),
        ({**good, "candidates": [{**c0, "category": 2.5}]}, 422, "candidates[0].category",
         "expected an integer id, found 2.5"),
        ({**good, "candidates": [{**c0, "tags": [1, "x"]}]}, 422, "candidates[0].tags",
         'expected a list of integer ids (or null), found [1, "x"]'),
        ({**good, "candidates": [{**c0, "recency": None}]}, 422, "candidates[0].recency",
         "expected a finite number, found null"),
        ({**good, "candidates": [{**c0, "item_id": 2**64}]}, 422, "candidates[0].item_id",
         f"expected an integer id, found {2**64}"),
        ({**good, "candidates": [{**c0, "price": 2**70}]}, 422, "candidates[0].price",
         f"expected a finite number, found {2**70}"),
        ({**good, "candidates": [{**c0, "price": float("nan")}]}, 422, "candidates[0].price",
         "expected a finite number, found NaN"),
        ({**good, "candidates": [c0] * 65}, 413, "candidates", "expected at most 64 candidates per request "
         "(--max-candidates), found 65"),
        (b'{"user_id": 1, "candidates": [' + b" " * 16000 + b"]}", 413, "body",
         "expected at most 16000 bytes (--max-body-bytes)"),
        ({**good, "user_id": UNKNOWN}, 404, "user_id", f"user {UNKNOWN} has neither user_state nor user_features"),
        ({**good, "user_id": int(day[0]["user_id"][OTHER_ROW])}, 409, "user_id", f"written by model {OTHER_VERSION}"),
    ]
    for body, status, field, message in cases:
        r = (httpx.post(f"{url}/score", content=body) if isinstance(body, bytes)
             else httpx.post(f"{url}/score", content=json.dumps(body)))
        assert r.status_code == status, (body if isinstance(body, bytes) else field, r.text)
        assert r.json()["field"] == field and message in r.json()["error"], r.json()
    chunked = httpx.post(f"{url}/score", content=iter([b'{"user_id": 1, "candidates": [', b" " * 16000, b"]}"]))
    assert chunked.status_code == 413 and "--max-body-bytes" in chunked.json()["error"]  # no Content-Length
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.post(f"{url}/score", json=good).status_code == 200


def test_a_lost_redis_is_a_503_and_the_service_recovers(services, stores, redis, model_dir, day):
    """Redis going away: /score and /ready answer 503 naming the store, /health stays up; once
    Redis is back (and refilled), the same process serves again."""
    url, (warehouse, address, _) = services["redis"], stores["redis"]
    doc = _request(day, 0, 5, seed=3)
    assert httpx.post(f"{url}/score", json=doc).json()["state_source"] == "online_store"
    redis.proc.terminate()
    redis.proc.wait(10)
    r = httpx.post(f"{url}/score", json=doc, timeout=30)
    assert r.status_code == 503 and "the online store failed" in r.json()["error"], r.text
    ready = httpx.get(f"{url}/ready", timeout=30)
    assert ready.status_code == 503 and "the online store does not answer" in ready.json()["reason"]
    assert httpx.get(f"{url}/health").status_code == 200
    redis.proc, _ = start_redis_server(int(address.rsplit(":", 1)[1]))
    _fill(warehouse, model_dir, day[0], address)
    assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
    r = httpx.post(f"{url}/score", json=doc, timeout=30)
    assert r.status_code == 200 and r.json()["state_source"] == "online_store"


def test_a_stalled_redis_fails_the_read_instead_of_holding_it(stores, model_dir):
    """A Redis that accepts connections and never answers: the lean read raises a TimeoutError
    (socket timeouts set, one retry without backoff) instead of blocking the scoring thread."""
    import redis as redis_py

    from serving.online_scorer import REDIS_TIMEOUT_S

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        fs = feature_store(stores["redis"][0], f"127.0.0.1:{silent.getsockname()[1]}", redis_timeout_s=0.2)
        reader = state_reader(fs)
        assert reader.client.connection_pool.connection_kwargs["socket_timeout"] == 0.2
        assert reader.client.get_retry().get_retries() == 1
        with pytest.raises(redis_py.TimeoutError):
            reader.read([1])
    finally:
        silent.close()
    warehouse, address, _ = stores["redis"]  # the scorer (and so the service) sets its timeout
    scorer = OnlineScorer(model_dir, warehouse, redis=address)
    assert f"socket_timeout={REDIS_TIMEOUT_S}" in scorer.store.config.online_store.connection_string
    assert scorer.reader.client.connection_pool.connection_kwargs["socket_timeout"] == REDIS_TIMEOUT_S


def test_serve_refuses_bad_options_and_a_missing_store_before_listening(model_dir, tmp_path):
    from cli.main import main

    config = tmp_path / "job.toml"
    config.write_text(f'warehouse = "{tmp_path / "warehouse"}"\nmodel = "{model_dir}"\n')
    assert main(["serve", "--config", str(config), "--max-candidates", "0"]) == 2
    assert main(["serve", "--config", str(config), "--batch-window-ms", "-1"]) == 2
    assert main(["serve", "--config", str(config), "--port", str(free_port())]) == 7  # nothing applied yet
