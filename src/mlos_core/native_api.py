"""The native API: ``POST /models/{id}/inference``, ``GET /models``, ``GET /models/{id}``.

A request is text (``input``: a string, a list of strings or of ``[text, text]`` pairs, or
``query`` + ``documents``; optional ``prompt``/``prompt_name``; ``top_k`` for classifiers) or
tensors (``inputs``: ``{name: nested list}``), with an optional ``outputs`` list. Classifiers
also answer ``labels`` as ``transformers.pipeline`` does.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from axon.model.classification import top_labels
from mlos_core.admin_api import AdminAuth, unregister
from mlos_core.batching import Pending
from mlos_core.errors import JSON_HEADERS, ApiError, RawHeaders
from mlos_core.fastpath import FastRoute, ReadBody, Reply
from mlos_core.service import InferenceService, prompt_key, tensor_request, text_request
from mlos_core.tensors import RequestSchema, array_from_json, check_against_schema, np_dtype
from mlos_core.wire import LARGE_BODY_BYTES, JSONResponse, check_text_budget, dumps, outputs_json, parse_json

__all__ = ["build_pending", "fast_routes", "model_id_from_path", "parse_native", "routes"]

MAX_OUTPUTS = 64  # output names one request may list


def model_id_from_path(raw: str) -> str:
    """The model id from a route's path, which uvicorn has already percent-decoded once
    (``demo%2Fenc%401`` arrives as ``demo/enc@1``). A '%' left over means it was encoded twice
    (``%252F``): refused rather than decoded again, so that no id has two spellings."""
    model_id = raw.strip("/")
    if "%" in model_id:
        raise ApiError(400, "bad_model_id", f"model id {model_id!r} in the path still holds '%' after URL decoding "
                       "(encoded twice?); encode it once: demo%2Fenc%401 or demo/enc@1")
    return model_id


def requested_outputs(body: dict[str, Any]) -> list[str] | None:
    wanted = body.get("outputs")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted) or len(wanted) > MAX_OUTPUTS:
        raise ApiError(400, "bad_request", f"'outputs' must be a list of at most {MAX_OUTPUTS} output names (strings)")
    return wanted


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
        pending = text_request(texts, schema, deadline, key=("pairs",) if pairs else prompt_key(body))
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
        pending = tensor_request(schema, arrays, deadline)
    if wanted is not None:
        pending.outputs = frozenset(wanted)
    return pending


def parse_native(raw: bytes, schema: RequestSchema, deadline: float
                 ) -> tuple[Pending, list[str] | None, int | None]:
    """Body bytes -> validated request, its wanted outputs and top_k (in the helper process when
    the body is large)."""
    body = parse_json(raw)
    pending = build_pending(schema, body, deadline, large=len(raw) > LARGE_BODY_BYTES)
    return pending, body.get("outputs"), requested_top_k(body) if schema.pairs else 1


def fast_routes(service: InferenceService) -> list[FastRoute]:
    registry, metrics = service.registry, service.metrics

    async def infer(raw_id: str, headers: RawHeaders, read_body: ReadBody) -> Reply:
        """POST /models/{id}/inference."""
        model = await registry.resolve(model_id_from_path(raw_id))
        service.admit(model)
        body = await read_body()
        try:
            pending, wanted, top_k = await service.parse(body, parse_native, model.schema, service.deadline())
        except ApiError as exc:
            metrics.request(model.model_id, "failed", exc.code)
            raise
        pending.enqueued = time.perf_counter()
        pending.deadline = pending.enqueued + service.settings.request_timeout_s  # from when the whole body was here
        result = await service.submit(model, pending)
        answer: dict[str, Any] = {"model_id": model.model_id, "outputs": outputs_json(result.outputs, wanted)}
        scores = result.outputs.get("scores", result.outputs.get("probabilities"))
        if model.labels is not None and scores is not None:  # what transformers.pipeline answers
            answer["labels"] = top_labels(scores, model.labels, top_k)
        answer.update(batch_size=result.batch_size, inference_time_us=result.compute_us,
                      queue_time_us=result.queue_us)
        return dumps(answer), JSON_HEADERS

    return [FastRoute("/models/", "/inference", infer)]


def routes(service: InferenceService, admin: AdminAuth) -> list[Route]:
    registry = service.registry

    async def list_models(request: Request) -> Response:
        models = [m.describe() for m in registry.models.values()]
        models += [{"model_id": k, "state": "failed", "error": v} for k, v in registry.failed.items()]
        return JSONResponse({"models": models})

    async def model_route(request: Request) -> Response:
        raw = request.path_params["rest"]
        if raw.endswith("/inference"):  # POST never gets here: FastPath answers it
            raise ApiError(405, "method_not_allowed", "use POST for inference")
        model_id = model_id_from_path(raw)
        if request.method == "DELETE":
            return await unregister(request, admin, registry, model_id)
        if request.method == "GET":
            return JSONResponse(registry.get(model_id).describe())
        raise ApiError(405, "method_not_allowed", f"{request.method} is not supported here")

    return [Route("/models", list_models), Route("/models/{rest:path}", model_route, methods=["GET", "POST", "DELETE"])]
