"""The inference service: what every protocol's route does with a request once it has parsed it.

``admit`` (503 under overload, before the body is read), building the pending request
(:func:`text_request`, :func:`tensor_request`, with the token estimate the batcher budgets by),
``parse`` (in the helper process when the body is large) and ``submit`` (through the model's
batcher; a request with more texts than a batch holds is split into batches and answered as
one). The routes (native_api, kserve, openai_api, rerank_api) only translate their protocol to
and from these.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from mlos_core.batching import BatchResult, Pending
from mlos_core.errors import ApiError
from mlos_core.parse_helper import LargeBodies
from mlos_core.registry import LoadedModel, Registry
from mlos_core.settings import ServerSettings
from mlos_core.telemetry import Metrics
from mlos_core.tensors import RequestSchema
from mlos_core.wire import Body

__all__ = ["MAX_PROMPT_CHARS", "InferenceService", "estimate_tokens", "prompt_key", "tensor_request", "text_request"]

T = TypeVar("T")

MAX_PROMPT_CHARS = 4096


def estimate_tokens(texts: list[Any], schema: RequestSchema) -> int:
    """A cheap upper-bound guess of the tokens a request adds (words x 1.5 + specials), capped at max_length."""
    cap = schema.text_max_length or 512
    total = 0
    for t in texts:
        t = t if isinstance(t, str) else " ".join(t)  # a pair: both segments
        total += min(cap, int(len(t.split()) * 1.5) + len(t) // 20 + 2)
    return total


def prompt_key(fields: dict[str, Any]) -> tuple[str, ...]:
    """The batching key of a text request from its ``prompt`` (the text itself) or ``prompt_name``
    (one of the model's prompts, checked when its batch runs), so one batch has one prompt."""
    prompt, name = fields.get("prompt"), fields.get("prompt_name")
    if prompt is not None and name is not None:
        raise ApiError(400, "bad_prompt", "give either 'prompt' or 'prompt_name', not both")
    for key, value in (("prompt", prompt), ("prompt_name", name)):
        if value is not None:
            if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
                raise ApiError(400, "bad_prompt", f"{key!r} must be a string of at most {MAX_PROMPT_CHARS} characters")
            return ("text", key, value)
    return ("text",)


def text_request(texts: list[Any], schema: RequestSchema, deadline: float, *, key: tuple[str, ...] = ("text",),
                 outputs: frozenset[str] | None = None) -> Pending:
    """Texts (or ``(text, text)`` pairs, key ``("pairs",)``) as one pending request."""
    return Pending(rows=len(texts), key=key, texts=texts, deadline=deadline, tokens=estimate_tokens(texts, schema),
                   outputs=outputs)


def tensor_request(schema: RequestSchema, arrays: dict[str, np.ndarray], deadline: float) -> Pending:
    """Checked input tensors as one pending request; requests batch together when their
    inputs' trailing shapes and dtypes agree."""
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) != 1:
        raise ApiError(400, "bad_shape", "all inputs must have the same batch (first) dimension")
    n = rows.pop()
    if n < 1:
        raise ApiError(400, "bad_shape", "the batch dimension is empty")
    if n > schema.max_rows:
        raise ApiError(400, "too_many_inputs", f"at most {schema.max_rows} rows per request")
    key = ("tensor", *sorted((k, a.shape[1:], a.dtype.str) for k, a in arrays.items()))
    return Pending(rows=n, key=key, tensors=arrays, deadline=deadline)


def split_request(pending: Pending, rows: int) -> list[Pending]:
    """A text request with more texts than a batch holds, as requests of at most *rows* texts."""
    texts = pending.texts or []
    parts = []
    for start in range(0, len(texts), rows):
        chunk = texts[start:start + rows]
        share = pending.tokens * len(chunk) // max(1, len(texts))
        parts.append(dataclasses.replace(pending, rows=len(chunk), texts=chunk, tokens=share, future=None))
    return parts


def join_results(parts: list[BatchResult]) -> BatchResult:
    """The parts' outputs in order, as one answer (queue time: the longest wait; compute: the sum)."""
    outputs = {name: np.concatenate([p.outputs[name] for p in parts], axis=0) for name in parts[0].outputs}
    return BatchResult(outputs, max(p.queue_us for p in parts), sum(p.compute_us for p in parts),
                       max(p.batch_size for p in parts))


class InferenceService:
    """One server process's models, batchers, metrics and large-body parser, as the routes use them."""

    def __init__(self, settings: ServerSettings, registry: Registry, metrics: Metrics,
                 large_bodies: LargeBodies) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.large_bodies = large_bodies

    def deadline(self) -> float:
        """When a request arriving now times out (--request-timeout)."""
        return time.perf_counter() + self.settings.request_timeout_s

    def admit(self, model: LoadedModel) -> None:
        """Under overload a request is turned away (503) before its body is even read."""
        try:
            model.batcher.admit()
        except ApiError as exc:
            self.metrics.request(model.model_id, "rejected", exc.code)
            raise

    async def parse(self, body: Body, fn: Callable[..., T], *args: Any) -> T:
        """``fn(body bytes, *args)``: here for a small body, in the parse helper for a large one."""
        return await self.large_bodies.parse(body, fn, *args)

    async def submit(self, model: LoadedModel, pending: Pending) -> BatchResult:
        """The request's outputs, through the model's batcher (counted in the metrics)."""
        t0 = time.perf_counter()
        try:
            if pending.rows > model.batcher.max_batch_size:  # many texts: batches of max_batch_size, one answer
                parts = split_request(pending, model.batcher.max_batch_size)
                result = join_results(list(await asyncio.gather(*(model.batcher.submit(part) for part in parts))))
                pending.tokenized = sum(part.tokenized for part in parts)
            else:
                result = await model.batcher.submit(pending)
        except ApiError as exc:
            self.metrics.request(model.model_id, "rejected" if exc.status in (503, 504) else "failed", exc.code)
            raise
        self.metrics.queue_time(model.model_id, result.queue_us / 1e6)
        self.metrics.request(model.model_id, "ok", None, time.perf_counter() - t0)
        return result
