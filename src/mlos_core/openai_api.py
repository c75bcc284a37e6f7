"""The OpenAI embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models``.

What the ``openai`` client (``client.embeddings.create``), LangChain's ``OpenAIEmbeddings`` and
most RAG frameworks call. ``model`` is the model's spec (``ns/name@version``, or ``ns/name`` for
the one registered last); ``input`` a string or a list of strings (token-id arrays are refused:
the server tokenizes); ``encoding_format`` ``float`` (default) or ``base64`` (little-endian
float32, what the openai client asks for unless told otherwise); ``dimensions`` is accepted only
when it is the model's own width (a model that declares no truncation cannot be cut). The request
goes through the model's batcher like a native one, split into batches when it has more texts
than a batch holds (up to ``--max-request-inputs``). ``usage`` counts the tokens the texts became
(special tokens and any default prompt included). Errors have OpenAI's shape, ``{"error":
{"message", "type", "param", "code"}}``, so clients raise their usual exceptions.
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlos_core.errors import JSON_HEADERS, ApiError, RawHeaders
from mlos_core.fastpath import FastRoute, ReadBody, Reply
from mlos_core.registry import LoadedModel, Registry
from mlos_core.service import InferenceService, text_request
from mlos_core.wire import JSONResponse, check_text_budget, dumps, json_object

__all__ = ["EmbeddingsRequest", "fast_routes", "find_model", "openai_error_body", "parse_embeddings_request",
           "routes"]

EMBEDDINGS_OUTPUT = "embeddings"


def openai_error_body(status: int, code: str, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 404:
        kind = "not_found_error"
    elif status in (429, 503):
        kind = "overloaded_error"
    return dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


class EmbeddingsRequest(NamedTuple):
    model: str
    texts: list[str]
    base64: bool
    dimensions: int | None


def parse_embeddings_request(raw: bytes, max_texts: int) -> EmbeddingsRequest:
    """Body bytes -> a checked request (in the parse helper when the body is large); picklable."""
    body = json_object(raw, "{'model': ..., 'input': ...}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "bad_request", "'model' must name a registered model, e.g. 'ns/name@version'")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, (int, list)) for t in texts):
        raise ApiError(400, "token_ids_unsupported", "'input' as token ids is not supported: send the text "
                       "(a string or a list of strings); the server tokenizes it with the model's tokenizer")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "bad_input", "'input' must be a non-empty string or list of strings")
    if len(texts) > max_texts:
        raise ApiError(400, "too_many_inputs", f"'input': at most {max_texts} texts per request "
                       "(--max-request-inputs)")
    check_text_budget(texts)
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "bad_encoding_format", f"'encoding_format' must be 'float' or 'base64', not {fmt!r:.40}")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise ApiError(400, "bad_dimensions", "'dimensions' must be a positive integer")
    return EmbeddingsRequest(model.strip(), texts, fmt == "base64", dims)


async def find_model(registry: Registry, spec: str) -> LoadedModel:
    """``ns/name@version`` (loaded here first if another worker registered it a moment ago), or
    ``ns/name``: the version registered last."""
    if "@" in spec:
        return await registry.resolve(spec)
    return registry.find(spec)


def embedding_model(model: LoadedModel) -> None:
    post = (model.manifest.postprocessing or {}).get("type")
    gives = EMBEDDINGS_OUTPUT in model.output_names or post in ("pooling", "mean_pooling", "embedding_output")
    if model.text is None or not gives:
        raise ApiError(400, "not_an_embedding_model", f"model {model.model_id!r} does not return text embeddings "
                       f"(its outputs: {', '.join(model.output_names)}); use POST /models/{model.model_id}/inference")


def dimensions_refused(model: LoadedModel, width: int) -> ApiError:
    return ApiError(400, "dimensions_not_supported", f"model {model.model_id!r} returns {width}-dimensional "
                    f"embeddings and declares no truncation; leave 'dimensions' out or set it to {width}")


def render_embeddings(model_id: str, embeddings: np.ndarray, as_base64: bool, tokens: int) -> bytes:
    rows = embeddings.astype("<f4", copy=False)
    data: list[dict[str, Any]] = [
        {"object": "embedding", "index": i,
         "embedding": base64.b64encode(row.tobytes()).decode("ascii") if as_base64 else row}
        for i, row in enumerate(rows)]
    return dumps({"object": "list", "data": data, "model": model_id,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def fast_routes(service: InferenceService) -> list[FastRoute]:
    registry = service.registry

    async def embeddings(tail: str, headers: RawHeaders, read_body: ReadBody) -> Reply:
        body = await read_body()
        req = await service.parse(body, parse_embeddings_request, service.settings.max_request_inputs)
        model = await find_model(registry, req.model)
        embedding_model(model)
        width = next((o.shape[-1] for o in model.session.session.get_outputs() if o.name == EMBEDDINGS_OUTPUT), None)
        # (not in the graph when pooling runs in numpy: then checked on the answer below)
        if req.dimensions is not None and isinstance(width, int) and req.dimensions != width:
            raise dimensions_refused(model, width)
        service.admit(model)
        pending = text_request(req.texts, model.schema, service.deadline(), outputs=frozenset([EMBEDDINGS_OUTPUT]))
        result = await service.submit(model, pending)
        vectors = result.outputs[EMBEDDINGS_OUTPUT]
        if req.dimensions is not None and req.dimensions != vectors.shape[-1]:
            raise dimensions_refused(model, vectors.shape[-1])
        return render_embeddings(model.model_id, vectors, req.base64, pending.tokenized), JSON_HEADERS

    return [FastRoute("/v1/embeddings", "", embeddings, exact=True, errors=openai_error_body)]


def routes(registry: Registry) -> list[Route]:
    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": key, "object": "model", "created": int(m.loaded_at), "owned_by": "mlos-core"}
            for key, m in sorted(registry.models.items())]})

    async def post_only(request: Request) -> Response:  # POST is answered by the FastPath before this
        raise ApiError(405, "method_not_allowed", f"use POST for {request.url.path}")

    return [Route("/v1/models", list_models),
            *(Route(path, post_only, methods=["GET", "PUT", "DELETE", "PATCH"])
              for path in ("/v1/embeddings", "/rerank", "/v1/rerank"))]
