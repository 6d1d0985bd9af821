"""Online scoring: the lean state read against Feast's, in process, and the scoring service under load.

    python benchmarks/scoring_service.py                     # defaults: --users 2000 --candidates 500 --d-model 128
    python benchmarks/scoring_service.py --quick             # a smoke run: few requests, clients 1,4

One synthetic day's user features and, for every other user, the user's state go into the
SQLite online store and (if redis-server is installed) a Redis one started here, with the
writer ``ugsep materialize`` uses. Every request is one user and ``--candidates`` candidates.

In process, p50/p99 per request of: the stored-state path with the lean read and with Feast's
``get_online_features``, the user side computed from scratch (model only: encode_users +
score_groups on the user's features, no store read), and the service's own path for a user
without state (features read through Feast, then encoded).

Service: ``ugsep serve`` is started for each store, with and without micro-batching, and
driven from a separate process by an async HTTP client (httpx) over loopback: a bounded number
of concurrent clients, each sending its next request when the last one is answered, until a
fixed request count or a time limit. Throughput and p50/p99/p99.9 latency per cell; requests
for users with stored state and for users without (computed on the fly) are separate cells.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from local_redis import free_port, start_redis_server  # noqa: E402

DS = "2026-11-24"


# ----------------------------------------------------------------------------- load client
async def drive(url: str, bodies: list[bytes], concurrency: int, requests: int, time_limit: float) -> dict:
    """``concurrency`` clients send ``bodies`` round robin until ``requests`` are answered or the time is up."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(client.post("/score", content=bodies[i % len(bodies)], headers=headers)
                               for i in range(concurrency)))  # open the connections, untimed
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        sent = 0
        start = time.perf_counter()
        deadline = start + time_limit

        async def client_loop() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                t = time.perf_counter()
                r = await client.post("/score", content=body, headers=headers)
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    pct = {k: round(float(np.percentile(ms, q)), 2) for k, q in (("p50_ms", 50), ("p99_ms", 99), ("p999_ms", 99.9))}
    return {"clients": concurrency, "requests": len(ms), "statuses": statuses, "seconds": round(elapsed, 2),
            "req_per_s": round(len(ms) / elapsed, 1), **pct}


def client_main(a: argparse.Namespace) -> None:
    bodies = [line.encode() for line in Path(a.bodies).read_text().splitlines() if line]
    print(json.dumps(asyncio.run(drive(a.url, bodies, a.concurrency, a.requests, a.time_limit))))


def run_client(url: str, bodies: Path, concurrency: int, requests: int, time_limit: float) -> dict:
    """The load client in its own process (its CPU is not the service's event loop)."""
    p = subprocess.run([sys.executable, __file__, "--client", "--url", url, "--bodies", str(bodies),
                        "--concurrency", str(concurrency), "--requests", str(requests),
                        "--time-limit", str(time_limit)], capture_output=True, text=True, timeout=time_limit + 120)
    if p.returncode:
        raise RuntimeError(f"load client failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- the service
def start_service(config: Path, redis: str | None, batching: bool, threads: int | None, log: Path,
                  dtype: str = "float32"):
    """``ugsep serve`` in its own process; returns (process, url) once /ready answers 200."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", "--config", str(config), "--port", str(port)]
    cmd += ["--redis", redis] if redis else []
    cmd += [] if batching else ["--no-batching"]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--dtype", dtype]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ugsep serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"ugsep serve did not get ready in 120 s: {log.read_text()[-2000:]}")


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- in process
def interleaved(fns: dict, n: int, rounds: int = 10) -> dict:
    """p50/p99 of each function, timed in ``rounds`` alternating rounds of n/rounds calls each,
    so that a change in the machine's load touches every function alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(max(1, n // rounds)):
                t = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t) * 1000)
    return {k: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}
            for k, v in times.items()}


def in_process(ckpt: str, warehouse: str, redis: str | None, request, user_cols, stateless_request, n: int,
               dtype: str = "float32") -> dict:
    from serving.online_scorer import OnlineScorer
    from ugsep.data.ranking_data import to_tensors

    lean = OnlineScorer(ckpt, warehouse, redis=redis, read="lean", dtype=dtype)
    feast = OnlineScorer(ckpt, warehouse, redis=redis, read="feast", dtype=dtype)
    model = lean.model
    items_t = to_tensors(request.items)
    index = torch.zeros(len(request), dtype=torch.long)
    users_t = to_tensors(user_cols)
    assert lean.score_many([request])[0].state_source == "online_store"
    assert lean.score_many([stateless_request])[0].state_source == "computed_from_features"
    np.testing.assert_array_equal(lean.score_many([request])[0].scores, feast.score_many([request])[0].scores)

    def user_side() -> None:
        with torch.inference_mode():
            model.encode_users(users_t)

    def scratch(m):  # the user side computed from its features, then the candidates scored
        def run() -> None:
            with torch.inference_mode():
                torch.sigmoid(m.score_groups(m.encode_users(users_t), items_t, index)).tolist()
        return run

    from_scratch = scratch(model)

    uid = [request.user_id]
    paths = {}
    if dtype != "float32":  # the same model in float32, for the precision's ratio
        from ugsep.checkpoint import load_checkpoint

        paths["from_scratch_float32"] = scratch(load_checkpoint(ckpt)[0].eval())
    calls = {}  # one score_groups call of k requests' candidates (the user's state gathered k * 500 times)
    with torch.inference_mode():
        state = model.encode_users(users_t)
    for k in (1, 4, 16):
        items_k = to_tensors({name: np.concatenate([col] * k) for name, col in request.items.items()})
        index_k = torch.zeros(k * len(request), dtype=torch.long)

        def call(items_k=items_k, index_k=index_k) -> None:
            with torch.inference_mode():
                model.score_groups(state, items_k, index_k)

        calls[f"call_{k}x"] = call
    times = interleaved(calls, max(8, n // 10))
    return {**times, **interleaved({
        "read_lean": lambda: lean.fetch_states(uid),
        "read_feast": lambda: feast.fetch_states(uid),
        "stored_lean": lambda: lean.score_many([request]),
        "stored_feast": lambda: feast.score_many([request]),
        "from_scratch_model_only": from_scratch,
        "user_side_only": user_side,
        "computed_via_store": lambda: lean.score_many([stateless_request]),
        **paths,
    }, n)}


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=500, help="candidates per request")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per cell")
    p.add_argument("--requests", type=int, default=1000, help="requests per cell (and in-process calls per path)")
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds per cell at most")
    p.add_argument("--threads", type=int, help="torch threads of the service and the in-process run")
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the model's precision, in process and in the service (ugsep serve --dtype)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 40 requests per cell, clients 1,4")
    p.add_argument("--json", action="store_true", help="also print every number as one JSON line")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the load client process
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.client:
        return client_main(a)
    if a.quick:
        a.requests, a.clients, a.users, a.time_limit = 40, "1,4", 200, 20.0
    if a.threads:
        torch.set_num_threads(a.threads)

    from online_fixture import candidate_records, fill_online_store
    from split_vs_full import MIXER_ONLY

    from jobs.generate import synthetic_tables
    from serving.request import ScoreRequest, candidate_columns
    from ugsep.checkpoint import save_checkpoint
    from ugsep.data.synthetic import synthetic_spec
    from ugsep.model import ModelConfig, RankingModel

    work = Path(tempfile.mkdtemp(prefix="ugsep-serve-"))
    torch.manual_seed(0)
    model = RankingModel(synthetic_spec(), ModelConfig(d_model=a.d_model, n_user_tokens=4, n_group_tokens=4,
                                                       **MIXER_ONLY)).eval()
    save_checkpoint(model, work / "model")
    (work / "job.toml").write_text(f'warehouse = "{work / "warehouse"}"\nmodel = "{work / "model"}"\n')
    users, items, _ = synthetic_tables(DS, a.users, mean_cands=5)
    with_state = np.arange(a.users) % 2 == 0  # every other user has stored state; the rest are computed
    rng = np.random.default_rng(0)

    def body(user_id: int) -> dict:
        rows = rng.integers(0, len(items["item_id"]), a.candidates)
        recency = {"recency": rng.exponential(24.0, a.candidates)}
        return {"user_id": int(user_id), "candidates": candidate_records(items, recency, rows)}

    bodies = {}
    for name, mask in (("stored", with_state), ("computed", ~with_state)):
        docs = [body(u) for u in users["user_id"][mask][:64]]
        bodies[name] = work / f"bodies_{name}.jsonl"
        bodies[name].write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    first = {name: json.loads(bodies[name].read_text().splitlines()[0]) for name in bodies}

    def score_request(doc: dict) -> ScoreRequest:
        return ScoreRequest(doc["user_id"], [c["item_id"] for c in doc["candidates"]],
                            candidate_columns(doc["candidates"], model.spec))

    row = int(np.flatnonzero(users["user_id"] == first["stored"]["user_id"])[0])
    user_cols = {f.name: users[f.name][row:row + 1] for f in model.spec.user_fields}

    redis_proc, redis = start_redis_server() if "redis" in a.stores else (None, None)
    stores = {s: (redis if s == "redis" else None) for s in a.stores.split(",") if s == "sqlite" or redis}
    result: dict = {"users": a.users, "candidates": a.candidates, "d_model": a.d_model,
                    "torch_threads": torch.get_num_threads(), "dtype": a.dtype, "in_process": {}, "service": []}
    clients = [int(c) for c in a.clients.split(",")]
    try:
        for store, conn in stores.items():
            fill_online_store(str(work / "warehouse"), str(work / "model"), users, with_state, redis=conn)
            print(f"[{store}] in process ...", file=sys.stderr, flush=True)
            result["in_process"][store] = in_process(str(work / "model"), str(work / "warehouse"), conn,
                                                     score_request(first["stored"]), user_cols,
                                                     score_request(first["computed"]), a.requests, a.dtype)
            for batching in (False, True):
                proc, url = start_service(work / "job.toml", conn, batching, a.threads, work / f"serve_{store}.log",
                                          a.dtype)
                try:
                    for source in ("stored", "computed"):
                        for c in clients:
                            print(f"[{store}] batching={batching} {source} clients={c} ...", file=sys.stderr,
                                  flush=True)
                            cell = run_client(url, bodies[source], c, a.requests, a.time_limit)
                            result["service"].append({"store": store, "batching": batching, "state": source,
                                                      **cell})
                    result.setdefault("batch_sizes", {})[f"{store}_{batching}"] = (
                        __import__("httpx").get(f"{url}/stats").json()["batch_sizes"])
                finally:
                    stop_service(proc)
    finally:
        if redis_proc:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    if a.json:
        print(json.dumps(result))


def report(result: dict) -> None:
    print(f"\nIn process: 1 user x {result['candidates']} candidates, D={result['d_model']}, "
          f"{result['torch_threads']} torch threads, {result['dtype']}; p50 (p99) ms; "
          "the last columns: vs from scratch (model only)")
    ip = result["in_process"]
    stores = list(ip)
    print("| path | " + " | ".join(f"{s} p50 (p99)" for s in stores) + " | " +
          " | ".join(f"{s} vs from scratch" for s in stores) + " |")
    print("| --- " * (1 + 2 * len(stores)) + "|")
    for key, name in (("read_lean", "state read, lean"), ("read_feast", "state read, Feast get_online_features"),
                      ("stored_lean", "stored state, lean read"), ("stored_feast", "stored state, Feast read"),
                      ("from_scratch_model_only", "from scratch, model only"),
                      ("user_side_only", "of which the user side (encode_users, 1 user)"),
                      ("computed_via_store", "computed on the fly (features via Feast)"),
                      ("from_scratch_float32", "from scratch, model only, in float32")):
        if key not in ip[stores[0]]:
            continue
        cells = [f"{ip[s][key]['p50_ms']:.2f} ({ip[s][key]['p99_ms']:.2f})" for s in stores]
        ratio = [f"{ip[s][key]['p50_ms'] / ip[s]['from_scratch_model_only']['p50_ms']:.2f}x"
                 if key.startswith(("stored", "from", "computed")) else "" for s in stores]
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratio) + " |")
    print(f"\nOne score_groups call of k requests' candidates: ms per {result['candidates']} candidates, p50; "
          "the last columns: vs k = 1")
    print("| k | " + " | ".join(stores) + " | " + " | ".join(f"{s} vs k = 1" for s in stores) + " |")
    print("| --- " * (1 + 2 * len(stores)) + "|")
    for k in (1, 4, 16):
        per = [ip[s][f"call_{k}x"]["p50_ms"] / k for s in stores]
        print(f"| {k} | " + " | ".join(f"{x:.2f}" for x in per) + " | " +
              " | ".join(f"{x / (ip[s]['call_1x']['p50_ms']):.2f}x" for x, s in zip(per, stores, strict=True)) + " |")

    print(f"\nService: requests of 1 user x {result['candidates']} candidates over loopback; req/s, p50/p99/p99.9 ms")
    print("| store | state | clients | no batching: req/s | p50 | p99 | p99.9 | micro-batching: req/s | p50 | p99 "
          "| p99.9 | throughput with / without |")
    print("| --- " * 12 + "|")
    cells = {(c["store"], c["state"], c["clients"], c["batching"]): c for c in result["service"]}
    for (store, state, clients, batching), c in cells.items():
        if batching:
            continue
        b = cells.get((store, state, clients, True))
        row = [store, state, str(clients)]
        for x in (c, b):
            row += [f"{x['req_per_s']:.1f}", f"{x['p50_ms']:.1f}", f"{x['p99_ms']:.1f}", f"{x['p999_ms']:.1f}"] if x \
                else ["-"] * 4
        row.append(f"{b['req_per_s'] / c['req_per_s']:.2f}x" if b else "-")
        print("| " + " | ".join(row) + " |")
    bad = [c for c in result["service"] if set(c["statuses"]) != {"200"} and set(c["statuses"]) != {200}]
    print(f"requests per cell: {min(c['requests'] for c in result['service'])}-"
          f"{max(c['requests'] for c in result['service'])}; non-200 answers: "
          f"{sum(n for c in bad for k, n in c['statuses'].items() if int(k) != 200)}")
    for key, sizes in result.get("batch_sizes", {}).items():
        print(f"requests per model call, {key}: {dict(sorted((int(k), v) for k, v in sizes.items()))}")


if __name__ == "__main__":
    main()
