"""``create_app(settings)``: routes, admin auth, body limits, and the lifespan that restores
registrations at start and drains the batchers at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from axon.model.classification import top_labels
from mlos_core import __version__, kserve, openai_api, rerank_api
from mlos_core.auth import load_or_create_token, require_admin
from mlos_core.batching import BatchResult, Pending
from mlos_core.bodies import check_text_budget, parse_json
from mlos_core.errors import ApiError, api_error_handler, error_response
from mlos_core.fastpath import (
    JSON_HEADERS,
    LARGE_BODY_BYTES,
    ClientGone,
    FastPath,
    FastRoute,
    Headers,
    ReadBody,
    Reply,
    read_asgi_body,
)
from mlos_core.jsonio import JSONResponse, dumps
from mlos_core.parse_helper import LargeBodies
from mlos_core.registry import LoadedModel, Registry
from mlos_core.settings import ServerSettings
from mlos_core.telemetry import Metrics
from mlos_core.tensors import RequestSchema, array_from_json, check_against_schema, np_dtype

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger("mlos_core.app")




async def read_body(request: Request, limit: int) -> bytes:
    """The body of a Starlette request, under the same limit checks as the fast path's."""
    try:
        return await read_asgi_body(request.scope, request.receive, limit)
    except ClientGone:
        raise ClientDisconnect from None


ADMIN_BODY_BYTES = 64 << 10  # admin calls carry a model id or a path; nothing bigger is parsed for them


async def read_json(request: Request, limit: int = ADMIN_BODY_BYTES) -> Any:
    return parse_json(await read_body(request, limit))


def model_id_from_path(raw: str) -> str:
    """The model id from a route's path, which uvicorn has already percent-decoded once
    (``demo%2Fenc%401`` arrives as ``demo/enc@1``). A '%' left over means it was encoded twice
    (``%252F``): refused rather than decoded again, so that no id has two spellings."""
    model_id = raw.strip("/")
    if "%" in model_id:
        raise ApiError(400, "bad_model_id", f"model id {model_id!r} in the path still holds '%' after URL decoding "
                       "(encoded twice?); encode it once: demo%2Fenc%401 or demo/enc@1")
    return model_id


_DTYPE_NAMES: dict[np.dtype[Any], str] = {}


def dtype_name(dtype: np.dtype[Any]) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:  # numpy computes .name through Python-level subclass checks on every access
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def to_json_outputs(outputs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, Any]:
    out = {}
    for name, arr in outputs.items():
        if wanted is not None and name not in wanted:
            continue
        out[name] = {"shape": list(arr.shape), "dtype": dtype_name(arr.dtype), "data": arr}  # jsonio writes arrays
    return out


MAX_OUTPUTS = 64  # output names one request may list


def requested_outputs(body: dict[str, Any]) -> list[str] | None:
    wanted = body.get("outputs")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted) or len(wanted) > MAX_OUTPUTS:
        raise ApiError(400, "bad_request", f"'outputs' must be a list of at most {MAX_OUTPUTS} output names (strings)")
    return wanted


def build_pending(schema: RequestSchema, body: Any, deadline: float, *, large: bool = False) -> Pending:
    """Validate one request against the model; a bad one fails here, never inside a batch.
    *large*: the body was big (this runs in the helper process); tensors are converted in pieces."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    wanted = requested_outputs(body)
    if "input" in body or "query" in body or "documents" in body:
        if schema.text_max_length is None:
            raise ApiError(400, "not_a_text_model", f"model {schema.model_id!r} takes tensors, not text; send "
                           "{'inputs': {name: values}}")
        texts, pairs = text_inputs(body, schema)
        if pairs and ("prompt" in body or "prompt_name" in body):
            raise ApiError(400, "bad_prompt", "'prompt' and 'prompt_name' go with single texts, not text pairs")
        pending = Pending(rows=len(texts), key=("pairs",) if pairs else prompt_key(body), texts=texts,
                          deadline=deadline, tokens=estimate_tokens(texts, schema))
    elif "prompt" in body or "prompt_name" in body:
        raise ApiError(400, "bad_request", "'prompt' and 'prompt_name' go with text ('input'), not tensors")
    else:
        tensors = body.get("inputs")
        if not isinstance(tensors, dict) or not tensors:
            raise ApiError(400, "bad_request", "send {'input': text} or {'inputs': {name: nested list}}")
        specs = {t.name: t for t in schema.inputs}
        missing = sorted(set(specs) - set(tensors))
        extra = sorted(set(tensors) - set(specs))
        if missing or extra:
            raise ApiError(400, "bad_inputs", f"'inputs' must be exactly {sorted(specs)}"
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {extra[:10]}" if extra else ""))
        arrays = {}
        for name, data in tensors.items():
            if isinstance(data, list) and len(data) > schema.max_rows:  # before converting it all
                raise ApiError(400, "too_many_inputs", f"input {name!r}: at most {schema.max_rows} rows per request, "
                               f"got {len(data)}")
            spec = specs[name]
            arr = array_from_json(name, data, np_dtype(spec.dtype), pieces=large)
            arrays[name] = check_against_schema(name, arr, spec.shape, spec.dtype)
        pending = pending_from_arrays(schema, arrays, deadline)
    if wanted is not None:
        pending.outputs = frozenset(wanted)
    return pending


def text_inputs(body: dict[str, Any], schema: RequestSchema) -> tuple[list[Any], bool]:
    """(texts, pairs?) of a text request: ``input`` as a string, a list of strings or a list of
    ``[query, passage]`` pairs, or ``query`` + ``documents`` (one pair per document)."""
    if "query" in body or "documents" in body:
        query, documents = body.get("query"), body.get("documents")
        if "input" in body or not isinstance(query, str) or not isinstance(documents, list) or not documents \
                or not all(isinstance(d, str) for d in documents):
            raise ApiError(400, "bad_input", "'query' (a string) and 'documents' (a non-empty list of strings) go "
                           "together, without 'input'")
        texts: list[Any] = [(query, d) for d in documents]
    else:
        texts = body["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise ApiError(400, "bad_input", "'input' must be a non-empty string or list of strings (or of "
                           "[text, text] pairs)")
        if all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in texts):
            texts = [(a, b) for a, b in texts]
        elif not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "bad_input", "'input' must be a non-empty string or list of strings (or of "
                           "[text, text] pairs)")
    pairs = isinstance(texts[0], tuple)
    if pairs and not schema.pairs:
        raise ApiError(400, "pairs_not_supported", f"model {schema.model_id!r} is not a cross-encoder or "
                       "classifier: it takes single texts, not pairs")
    if len(texts) > schema.max_texts:
        raise ApiError(400, "too_many_inputs", f"at most {schema.max_texts} texts per request (--max-request-inputs)")
    check_text_budget(texts)
    return texts, pairs


def requested_top_k(body: dict[str, Any]) -> int | None:
    """``top_k`` of a classifier request: absent 1 (the pipeline's default), null every label."""
    if "top_k" not in body:
        return 1
    k = body["top_k"]
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ApiError(400, "bad_request", "'top_k' must be a positive integer, or null for every label")
    return k


MAX_PROMPT_CHARS = 4096


def prompt_key(body: dict[str, Any]) -> tuple[str, ...]:
    """The batching key of a text request: its prompt (``prompt``: the text itself, ``prompt_name``:
    one of the model's prompts, checked when its batch runs), so one batch has one prompt."""
    prompt, name = body.get("prompt"), body.get("prompt_name")
    if prompt is not None and name is not None:
        raise ApiError(400, "bad_prompt", "give either 'prompt' or 'prompt_name', not both")
    for key, value in (("prompt", prompt), ("prompt_name", name)):
        if value is not None:
            if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
                raise ApiError(400, "bad_prompt", f"{key!r} must be a string of at most {MAX_PROMPT_CHARS} characters")
            return ("text", key, value)
    return ("text",)


def parse_native(raw: bytes, schema: RequestSchema, deadline: float
                 ) -> tuple[Pending, list[str] | None, int | None]:
    """Body bytes -> validated request, its wanted outputs and top_k (in the helper process when
    the body is large)."""
    body = parse_json(raw)
    pending = build_pending(schema, body, deadline, large=len(raw) > LARGE_BODY_BYTES)
    return pending, body.get("outputs"), requested_top_k(body) if schema.pairs else 1


def estimate_tokens(texts: list[str], schema: RequestSchema) -> int:
    """A cheap upper-bound guess of the tokens a request adds (words x 1.5 + specials), capped at max_length."""
    cap = schema.text_max_length or 512
    total = 0
    for t in texts:
        t = t if isinstance(t, str) else " ".join(t)  # a pair: both segments
        total += min(cap, int(len(t.split()) * 1.5) + len(t) // 20 + 2)
    return total


def split_pending(pending: Pending, rows: int) -> list[Pending]:
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


def pending_from_arrays(schema: RequestSchema, arrays: dict[str, np.ndarray], deadline: float) -> Pending:
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


def create_app(settings: ServerSettings) -> FastPath:
    metrics = Metrics()
    registry = Registry(settings, metrics)
    large_bodies = LargeBodies()
    token_holder: dict[str, str] = {}
    started = time.time()

    def admin(request: Request) -> None:
        require_admin(request, token_holder["token"])

    def admit(model: LoadedModel) -> None:
        """Under overload a request is turned away (503) before its body is even read."""
        try:
            model.batcher.admit()
        except ApiError as exc:
            metrics.request(model.model_id, "rejected", exc.code)
            raise

    async def run_inference(model: LoadedModel, pending: Pending) -> Any:
        t0 = time.perf_counter()
        try:
            if pending.rows > model.batcher.max_batch_size:  # many texts: batches of max_batch_size, one answer
                parts = split_pending(pending, model.batcher.max_batch_size)
                result = join_results(await asyncio.gather(*(model.batcher.submit(part) for part in parts)))
                pending.tokenized = sum(part.tokenized for part in parts)
            else:
                result = await model.batcher.submit(pending)
        except ApiError as exc:
            metrics.request(model.model_id, "rejected" if exc.status in (503, 504) else "failed", exc.code)
            raise
        metrics.queue_time(model.model_id, result.queue_us / 1e6)
        metrics.request(model.model_id, "ok", None, time.perf_counter() - t0)
        return result

    # --- health ----------------------------------------------------------------------------

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "healthy", "version": __version__, "uptime_s": round(time.time() - started, 1),
                             "models": len(registry.models), "repository": str(settings.repository)})

    async def ready(request: Request) -> Response:
        ok = not registry.failed
        return JSONResponse({"ready": ok, "models": sorted(registry.models), "failed": registry.failed},
                            status_code=200 if ok else 503)

    async def list_models(request: Request) -> Response:
        models = [m.describe() for m in registry.models.values()]
        models += [{"model_id": k, "state": "failed", "error": v} for k, v in registry.failed.items()]
        return JSONResponse({"models": models})

    async def register(request: Request) -> Response:
        admin(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object: {'model_id': 'ns/name@version'} or "
                           "{'manifest_path': '...'}")
        model_id = body.get("model_id")
        paths = [(k, body[k]) for k in ("manifest_path", "path", "model_path") if body.get(k) is not None]
        for key, value in [("model_id", model_id), *paths]:
            if value is not None and not isinstance(value, str):
                raise ApiError(400, "bad_request", f"{key!r} must be a string")
        path = next((v for _, v in paths if v), None)
        result = await registry.register(model_id=model_id, manifest_path=path)
        return JSONResponse(result, status_code=201 if result["status"] == "registered" else 200)

    async def infer_native(raw_id: str, headers: Headers, read_body: ReadBody) -> Reply:
        """POST /models/{id}/inference (a FastRoute)."""
        model = await registry.resolve(model_id_from_path(raw_id))
        admit(model)
        body = await read_body()
        deadline = time.perf_counter() + settings.request_timeout_s
        try:
            pending, wanted, top_k = await large_bodies.parse(body, parse_native, model.schema, deadline)
        except ApiError as exc:
            metrics.request(model.model_id, "failed", exc.code)
            raise
        pending.enqueued = time.perf_counter()
        pending.deadline = pending.enqueued + settings.request_timeout_s  # from when the whole body was here
        result = await run_inference(model, pending)
        answer: dict[str, Any] = {"model_id": model.model_id, "outputs": to_json_outputs(result.outputs, wanted)}
        scores = result.outputs.get("scores", result.outputs.get("probabilities"))
        if model.labels is not None and scores is not None:  # what transformers.pipeline answers
            answer["labels"] = top_labels(scores, model.labels, top_k)
        answer.update(batch_size=result.batch_size, inference_time_us=result.compute_us,
                      queue_time_us=result.queue_us)
        return dumps(answer), JSON_HEADERS

    async def model_route(request: Request) -> Response:
        raw = request.path_params["rest"]
        if raw.endswith("/inference"):  # POST never gets here: FastPath answers it
            raise ApiError(405, "method_not_allowed", "use POST for inference")
        model_id = model_id_from_path(raw)
        if request.method == "DELETE":
            admin(request)
            return JSONResponse(await registry.unregister(model_id))
        if request.method == "GET":
            return JSONResponse(registry.get(model_id).describe())
        raise ApiError(405, "method_not_allowed", f"{request.method} is not supported here")

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    metrics.gauges["mlos_queue_depth"] = lambda: {f'{{model="{k}"}}': m.batcher.depth
                                                  for k, m in registry.models.items()}
    metrics.gauges["mlos_models_loaded"] = lambda: {"": len(registry.models)}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        token_holder["token"] = load_or_create_token(settings.token_file, settings.repository)  # type: ignore[arg-type]
        await registry.restore()
        log.info("MLOS Core %s: repository %s, %d model(s) restored", __version__, settings.repository,
                 len(registry.models))
        watcher = asyncio.get_running_loop().create_task(registry.watch_state()) if settings.workers > 1 else None
        yield
        if watcher is not None:
            watcher.cancel()
        await registry.close()  # SIGTERM: uvicorn stops accepting, in-flight requests finish, then this
        large_bodies.close()

    routes = [
        Route("/health", health), Route("/ready", ready), Route("/models", list_models),
        Route("/models/register", register, methods=["POST"]),
        Route("/models/{rest:path}", model_route, methods=["GET", "POST", "DELETE"]),
        Route("/metrics", metrics_route),
        *kserve.routes(settings, registry, admin),
        *openai_api.routes(registry),
    ]
    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        return error_response(status, code, str(getattr(exc, "detail", "")) or code.replace("_", " "))

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # nobody is there to read it; uvicorn drops it

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, ApiError: api_error_handler,
                                        ClientDisconnect: client_gone, Exception: api_error_handler})
    app.state.registry = registry
    app.state.metrics = metrics
    fast_routes = [FastRoute("/models/", "/inference", infer_native),
                   FastRoute("/v2/models/", "/infer", kserve.infer_handler(settings, registry, admit, run_inference,
                                                                         large_bodies)),
                   *openai_api.fast_routes(settings, registry, admit, run_inference, large_bodies),
                   *rerank_api.fast_routes(settings, registry, admit, run_inference, large_bodies)]
    return FastPath(app, fast_routes, settings.max_body_bytes)


def create_app_from_env() -> FastPath:
    """Factory for uvicorn's worker processes: settings arrive as JSON in MLOS_CORE_SETTINGS."""
    from pathlib import Path

    raw = json.loads(os.environ["MLOS_CORE_SETTINGS"])
    for key in ("repository", "token_file", "state_dir"):
        if raw.get(key):
            raw[key] = Path(raw[key])
    return create_app(ServerSettings(**raw))
