"""Micro-batching: concurrent score requests go through the model together, in one call.

Requests wait in a queue while the model is busy. When it is free, the batcher takes the
oldest request and, while more requests are being received (their bodies read and checked),
waits for them up to ``window_ms`` after the oldest one arrived, then scores every queued
request (up to ``max_candidates`` candidates) in one ``score_many`` call on the scoring thread.
A lone client is never held back: with nothing else arriving, its request goes at once.
With ``enabled=False`` every request is its own model call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchSettings:
    enabled: bool = True
    window_ms: float = 2.0  # the longest the oldest request waits for others being received
    # candidates per model call (a larger request goes alone): on the CPU a call of more than
    # about 2k candidates costs more per candidate (docs/performance.md, Online scoring)
    max_candidates: int = 2048


@dataclass
class _Job:
    request: object
    size: int
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    requests: int = 0
    model_calls: int = 0
    largest_batch: int = 0  # requests in the largest model call so far
    batch_sizes: dict[int, int] = field(default_factory=dict)  # requests per call -> calls


class MicroBatcher:
    """Runs ``score_many(requests) -> results`` (a result may be an Exception: that request's
    error) on one scoring thread, for requests submitted from the event loop."""

    def __init__(self, score_many: Callable[[Sequence], list], settings: BatchSettings | None = None) -> None:
        self.score_many = score_many
        self.settings = settings or BatchSettings()
        self.stats = BatchStats()
        self.arriving = 0  # requests being received: the batcher waits for these, never for a guess
        self._pending: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ugsep-score")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ugsep-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def run_alone(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the scoring thread, between model calls (warm-up, store checks)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @contextlib.contextmanager
    def receiving(self):
        """Mark a request as being received (body read and checked) while the block runs."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._wake.set()

    async def submit(self, request, size: int):
        """Queue ``request`` (``size`` candidates) and wait for its result."""
        loop = asyncio.get_running_loop()
        job = _Job(request, size, loop.create_future(), loop.time())
        self._pending.append(job)
        self.stats.requests += 1
        self._wake.set()
        return await job.future

    def _take(self) -> list[_Job]:
        """The next model call's jobs: the oldest first, then as many as fit ``max_candidates``."""
        batch = [self._pending.popleft()]
        if self.settings.enabled:
            total = batch[0].size
            while self._pending and total + self._pending[0].size <= self.settings.max_candidates:
                total += self._pending[0].size
                batch.append(self._pending.popleft())
        return batch

    def _queued_candidates(self) -> int:
        return sum(j.size for j in self._pending)

    async def _gather(self) -> None:
        """Wait, up to the window after the oldest request, while more requests are arriving."""
        loop = asyncio.get_running_loop()
        deadline = self._pending[0].arrived + self.settings.window_ms / 1000
        while self.arriving > 0 and self._queued_candidates() < self.settings.max_candidates:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self.settings.enabled:
                await self._gather()
            batch = self._take()
            try:
                results = await loop.run_in_executor(self._executor, self.score_many, [j.request for j in batch])
            except Exception as e:  # the service outlives any failure of a model call
                results = [e] * len(batch)
            n = len(batch)
            self.stats.model_calls += 1
            self.stats.largest_batch = max(self.stats.largest_batch, n)
            self.stats.batch_sizes[n] = self.stats.batch_sizes.get(n, 0) + 1
            for job, result in zip(batch, results, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
