"""The scoring service (``ugsep serve``): FastAPI on uvicorn, the model loaded once.

    POST /score   {"user_id": 42, "candidates": [{...}, ...]}  ->  {"user_id", "model_version",
                  "state_source", "item_ids", "scores"}, scores in the request's order
    GET  /health  200 while the process serves HTTP
    GET  /ready   200 once the model is warm and the online store answers; else 503 and why
    GET  /stats   requests, model calls and batch sizes so far

A refused request gets a 4xx and ``{"error": message, "field": the bad input}``: 400 unreadable
body, 413 body or candidate list over its limit, 422 a missing or mistyped field, 404 a user with
neither state nor features online, 409 state of another model version. 503: the online store
does not answer. No request brings the service down: an unexpected failure is a 500 for that
request alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from feature_store.store import OnlineStoreError
from serving.batching import BatchSettings, MicroBatcher
from serving.online_scorer import OnlineScorer, SequenceFeaturesError, StateVersionError, UnknownUserError
from serving.request import RequestError, parse_request
from serving.state_reader import OnlineStoreLayoutError

log = logging.getLogger("ugsep.serve")
READY_TIMEOUT_S = 2.0  # how long /ready waits for the online store to answer


@dataclass(frozen=True)
class ServeLimits:
    max_candidates: int = 4096  # candidates per request
    max_body_bytes: int = 4 << 20  # bytes per request body (500 candidates are about 50 KB)


def _store_errors() -> tuple[type[BaseException], ...]:
    import redis
    from feast.errors import FeastError

    return (OnlineStoreError, OnlineStoreLayoutError, sqlite3.Error, redis.RedisError, FeastError)


def error_response(e: BaseException) -> JSONResponse:
    """The HTTP answer to a request that failed with ``e``."""
    if isinstance(e, RequestError):
        return JSONResponse({"error": str(e), "field": e.field}, status_code=e.status)
    if isinstance(e, UnknownUserError):
        return JSONResponse({"error": str(e), "field": "user_id"}, status_code=404)
    if isinstance(e, StateVersionError | SequenceFeaturesError):
        return JSONResponse({"error": str(e), "field": "user_id"}, status_code=409)
    if isinstance(e, _store_errors()):
        return JSONResponse({"error": f"the online store failed: {type(e).__name__}: {e}"}, status_code=503)
    log.error("unexpected failure of a request", exc_info=e)
    return JSONResponse({"error": f"unexpected {type(e).__name__}: {e}"}, status_code=500)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before more of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(f"Content-Length: expected a byte count, found {declared!r}", "Content-Length", 400)
    if declared is not None and int(declared) > limit:
        raise RequestError(f"body: expected at most {limit} bytes (--max-body-bytes), found {declared}", "body", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"body: expected at most {limit} bytes (--max-body-bytes), found more", "body", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(scorer: OnlineScorer, limits: ServeLimits | None = None,
               batching: BatchSettings | None = None) -> FastAPI:
    limits, batching = limits or ServeLimits(), batching or BatchSettings()
    batcher = MicroBatcher(scorer.score_many, batching)
    status = {"warm": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        await batcher.run_alone(scorer.warm_up)
        # a full collection walks every object of torch, Feast and the model (about 0.3 s on the
        # 2-core CPU); frozen, they are never walked again, so a request never waits for that
        gc.collect()
        gc.freeze()
        status["warm"] = True
        print(f"ugsep serve: model {scorer.version} ready ({scorer.dtype_name}; "
              f"online store: {scorer.online_store}, "
              f"{scorer.reader.kind} read; micro-batching: "
              f"{f'{batching.window_ms:g} ms' if batching.enabled else 'off'})", file=sys.stderr, flush=True)
        yield
        await batcher.stop()
        print("ugsep serve: stopped", file=sys.stderr, flush=True)

    app = FastAPI(title="ugsep scoring service", version=scorer.version, lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not status["warm"]:
            return JSONResponse({"status": "not ready", "reason": "the model is warming up"}, status_code=503)
        try:
            await asyncio.wait_for(asyncio.to_thread(scorer.reader.check), READY_TIMEOUT_S)
        except Exception as e:
            reason = f"the online store does not answer: {type(e).__name__}: {e}".strip()
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "model_version": scorer.version,
                             "online_store": scorer.online_store, "read": scorer.reader.kind,
                             "dtype": scorer.dtype_name})

    @app.get("/stats")
    async def stats() -> dict:
        return {**asdict(batcher.stats), "batching": asdict(batching), "limits": asdict(limits)}

    @app.post("/score")
    async def score(request: Request) -> Response:
        try:
            with batcher.receiving():
                req = parse_request(await read_body(request, limits.max_body_bytes), scorer.spec,
                                    limits.max_candidates)
            result = await batcher.submit(req, len(req))
        except Exception as e:
            return error_response(e)
        return Response(orjson.dumps(result.to_dict()), media_type="application/json")

    return app


def serve(scorer: OnlineScorer, host: str, port: int, limits: ServeLimits | None = None,
          batching: BatchSettings | None = None, log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM: uvicorn finishes the requests in flight, then the process ends
    by that signal (its default action, as uvicorn re-raises it)."""
    import uvicorn

    uvicorn.run(create_app(scorer, limits, batching), host=host, port=port, log_level=log_level,
                access_log=False, lifespan="on")
