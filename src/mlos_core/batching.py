"""Per-model dynamic batching.

Requests are validated before they join the queue (a malformed one never reaches a batch, so it
cannot fail its neighbours). One batcher task per execution instance takes the first waiting
request, adds every compatible request already waiting (up to ``max_batch_size`` rows), waits
at most ``max_queue_delay`` for more, and runs the batch on a worker thread (onnxruntime
releases the GIL). Under load, requests pile up while a batch runs, so batches form without any
added delay; at one client a request runs at once. Text is padded only to the longest sequence
of its batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlos_core.errors import ApiError

__all__ = ["BatchResult", "Batcher", "Pending"]


@dataclass
class Pending:
    """One request waiting for a batch."""

    rows: int
    key: tuple[Any, ...]  # requests batch together only when their keys are equal
    tokens: int = 0  # estimated tokens (text only): a batch stays within the token budget
    tokenized: int = 0  # the tokens its texts became (text only), set when its batch runs
    outputs: frozenset[str] | None = None  # outputs the client asked for (None: all)
    texts: list[str] | None = None
    tensors: dict[str, np.ndarray] | None = None
    future: asyncio.Future[BatchResult] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]
    queue_us: int
    compute_us: int
    batch_size: int


RunBatch = Callable[[list[Pending]], list[dict[str, np.ndarray]]]


class Batcher:
    def __init__(self, name: str, run_batch: RunBatch, *, max_batch_size: int, max_queue_delay_s: float,
                 max_queue_size: int, instances: int = 1, observe: Callable[..., None] | None = None,
                 max_batch_tokens: int = 0) -> None:
        self.name = name
        self.run_batch = run_batch
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self.max_queue_size = max_queue_size
        self.instances = max(1, instances)
        self.max_batch_tokens = max(0, max_batch_tokens)
        self.observe = observe or (lambda **_: None)
        self._queue: deque[Pending] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix=f"ort-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [self._loop.create_task(self._run(), name=f"batcher-{self.name}-{i}")
                       for i in range(self.instances)]

    def admit(self) -> None:
        """Raise the 503 a new request would get now (queue full, or the model is unloading)."""
        if self._closing:
            raise ApiError(503, "unloading", f"model {self.name!r} is being unloaded", headers={"Retry-After": "1"})
        if len(self._queue) >= self.max_queue_size:
            raise ApiError(503, "queue_full", f"model {self.name!r} queue is full ({self.max_queue_size} waiting); "
                           "retry shortly", headers={"Retry-After": "1"})

    async def submit(self, item: Pending) -> BatchResult:
        self.admit()
        item.future = (self._loop or asyncio.get_running_loop()).create_future()
        self._queue.append(item)
        self._wakeup.set()
        return await item.future

    def _take_batch(self) -> list[Pending]:
        first = self._queue.popleft()
        batch, rows, tokens = [first], first.rows, first.tokens
        skipped: list[Pending] = []
        budget = self.max_batch_tokens
        while self._queue and rows < self.max_batch_size:
            item = self._queue.popleft()
            fits = rows + item.rows <= self.max_batch_size and (not budget or tokens + item.tokens <= budget)
            if item.key == first.key and fits:
                batch.append(item)
                rows += item.rows
                tokens += item.tokens
            else:
                skipped.append(item)
        self._queue.extendleft(reversed(skipped))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_queue_delay_s and len(self._queue) < self.max_batch_size:
                oldest = self._queue[0].enqueued
                wait = self.max_queue_delay_s - (time.perf_counter() - oldest)
                if wait > 0:
                    await asyncio.sleep(wait)
                if not self._queue:
                    continue
            batch = self._take_batch()
            now = time.perf_counter()
            live = []
            for item in batch:
                if item.deadline and now > item.deadline:
                    self.observe(event="timeout")
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(ApiError(504, "deadline_exceeded",
                                                           "the request waited past its deadline"))
                else:
                    live.append(item)
            if not live:
                continue
            rows = sum(i.rows for i in live)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, live)
            except BaseException as exc:
                err = exc if isinstance(exc, ApiError) else ApiError(500, "inference_failed",
                                                                     f"inference failed: {type(exc).__name__}")
                for item in live:
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(err)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            compute_us = int((time.perf_counter() - t0) * 1e6)
            self.observe(event="batch", size=rows, compute_s=compute_us / 1e6)
            for item, out in zip(live, results, strict=True):
                if item.future is not None and not item.future.done():
                    item.future.set_result(BatchResult(out, int((t0 - item.enqueued) * 1e6), compute_us, rows))

    async def close(self) -> None:
        """Stop taking requests, finish every queued and running one, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)
