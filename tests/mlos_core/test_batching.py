"""The dynamic batcher on its own: batch limits, token budget, keys, deadlines, back-pressure."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlos_core.batching import Batcher, Pending
from mlos_core.errors import ApiError


def _recorder(delay: float = 0.0) -> tuple[list[list[Pending]], object]:
    batches: list[list[Pending]] = []
    gate = threading.Lock()

    def run(items: list[Pending]) -> list[dict[str, np.ndarray]]:
        with gate:
            batches.append(items)
        time.sleep(delay)
        return [{"rows": np.full((i.rows,), len(batches))} for i in items]

    return batches, run


def test_batches_respect_size_budget_and_keys() -> None:
    batches, run = _recorder(delay=0.05)

    async def scenario() -> None:
        b = Batcher("m", run, max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100, max_batch_tokens=100)
        b.start()
        first = asyncio.ensure_future(b.submit(Pending(rows=1, key=("text",), tokens=10)))
        await asyncio.sleep(0.01)  # the first batch is running; the rest pile up
        items = [Pending(rows=1, key=("text",), tokens=30) for _ in range(6)]
        items += [Pending(rows=2, key=("tensor", 4), tokens=0) for _ in range(5)]
        results = await asyncio.gather(first, *(b.submit(i) for i in items))
        await b.close()
        assert all(r.outputs["rows"].shape == (i.rows,) for r, i in zip(results[1:], items, strict=True))

    asyncio.run(scenario())
    for batch in batches:
        assert len({i.key for i in batch}) == 1, "keys never mix in a batch"
        assert sum(i.rows for i in batch) <= 8
        if batch[0].key == ("text",):
            assert sum(i.tokens for i in batch) <= 100
    assert max(len(b) for b in batches) > 1, "waiting requests were batched"


def test_queue_full_is_503_and_expired_requests_are_504() -> None:
    _, run = _recorder(delay=0.2)

    async def scenario() -> list[object]:
        b = Batcher("m", run, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2)
        b.start()
        running = asyncio.ensure_future(b.submit(Pending(rows=1, key=("k",))))
        await asyncio.sleep(0.02)
        late = Pending(rows=1, key=("k",), deadline=time.perf_counter() + 0.05)
        queued = [asyncio.ensure_future(b.submit(late)), asyncio.ensure_future(b.submit(Pending(rows=1, key=("k",))))]
        await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as info:
            await b.submit(Pending(rows=1, key=("k",)))
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"
        out = await asyncio.gather(running, *queued, return_exceptions=True)
        await b.close()
        return out

    out = asyncio.run(scenario())
    assert isinstance(out[1], ApiError) and out[1].status == 504
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)


def test_a_failing_batch_fails_only_its_requests_and_the_batcher_lives_on() -> None:
    calls = {"n": 0}

    def run(items: list[Pending]) -> list[dict[str, np.ndarray]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [{"ok": np.ones(1)} for _ in items]

    async def scenario() -> tuple[object, object]:
        b = Batcher("m", run, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=10)
        b.start()
        first = await asyncio.gather(b.submit(Pending(rows=1, key=("k",))), return_exceptions=True)
        second = await b.submit(Pending(rows=1, key=("k",)))
        await b.close()
        return first[0], second

    failed, ok = asyncio.run(scenario())
    assert isinstance(failed, ApiError) and failed.status == 500 and "RuntimeError" in failed.message
    assert ok.outputs["ok"].shape == (1,)  # type: ignore[attr-defined]
