"""Rerank routes in the shapes reranking clients already send.

* ``POST /rerank``: Hugging Face TEI's (``{"query", "texts", "raw_scores", "return_text",
  "truncate"}`` -> ``[{"index", "score", "text"?}]`` by falling score).
* ``POST /v1/rerank``: Cohere's and Jina's (``{"model", "query", "documents": [text or {"text"}],
  "top_n", "return_documents"}`` -> ``{"id", "results": [{"index", "relevance_score",
  "document"?}], "meta", "usage"}``).

The model is a cross-encoder (one label): ``model`` names it (``ns/name@version`` or ``ns/name``),
or, when the request names none (TEI's clients never do), the one reranker registered. Each
(query, document) pair is scored as ``CrossEncoder.predict`` scores it (its activation; TEI's
``raw_scores`` skips it), through the model's batcher, split into batches when there are more
documents than a batch holds (up to ``--max-request-inputs``). A large body is parsed in the
parse helper like any inference body. Truncation is always on (``truncate: false`` is accepted
and ignored: texts are cut at the model's length as the library cuts them).
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import numpy as np

from mlos_core.errors import JSON_HEADERS, ApiError, RawHeaders
from mlos_core.fastpath import FastRoute, ReadBody, Reply
from mlos_core.openai_api import find_model
from mlos_core.registry import LoadedModel, Registry
from mlos_core.service import InferenceService, text_request
from mlos_core.wire import check_text_budget, dumps, json_object

__all__ = ["RerankRequest", "fast_routes", "parse_rerank_request"]


class RerankRequest(NamedTuple):
    model: str | None
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    raw_scores: bool


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, "bad_request", f"{key!r} must be true or false")
    return value


def parse_rerank_request(raw: bytes, max_texts: int, style: str) -> RerankRequest:
    """Body bytes -> a checked request; *style* ``tei`` or ``cohere`` (picklable: runs in the helper)."""
    body = json_object(raw, "with 'query' and the texts to rank")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ApiError(400, "bad_request", "'model' must name a registered cross-encoder, e.g. 'ns/name@version'")
    query = body.get("query")
    if not isinstance(query, str):
        raise ApiError(400, "bad_input", "'query' must be a string")
    key = "texts" if style == "tei" else "documents"
    docs = body.get(key, body.get("texts" if key == "documents" else "documents"))
    if isinstance(docs, list):
        docs = [d.get("text") if isinstance(d, dict) else d for d in docs]
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise ApiError(400, "bad_input", f"{key!r} must be a non-empty list of strings"
                       + (" (or of {'text': ...} objects)" if style != "tei" else ""))
    if len(docs) > max_texts:
        raise ApiError(400, "too_many_inputs", f"{key!r}: at most {max_texts} texts per request (--max-request-inputs)")
    check_text_budget([(query, d) for d in docs])  # the query is tokenized with every document
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ApiError(400, "bad_request", "'top_n' must be a positive integer")
    returned = _flag(body, "return_text", False) if style == "tei" else _flag(body, "return_documents", True)
    raw_scores = _flag(body, "raw_scores", False)
    _flag(body, "truncate", True)
    return RerankRequest(model.strip() if model else None, query, docs, top_n, returned, raw_scores)


def reranker(model: LoadedModel) -> None:
    if model.text is None or model.labels is None or len(model.labels) != 1:
        raise ApiError(400, "not_a_reranker", f"model {model.model_id!r} is not a cross-encoder with one score per "
                       "pair; rerank with a cross-encoder (a model with one label)")


def the_reranker(registry: Registry) -> LoadedModel:
    found = [m for m in registry.models.values() if m.text is not None and m.labels is not None
             and len(m.labels) == 1]
    if len(found) != 1:
        names = ", ".join(sorted(m.model_id for m in found)) or "none is registered"
        raise ApiError(400, "model_required", f"name the cross-encoder in 'model' ({names})")
    return found[0]


def fast_routes(service: InferenceService) -> list[FastRoute]:
    registry = service.registry

    async def score(style: str, read_body: ReadBody) -> tuple[RerankRequest, LoadedModel, np.ndarray, int]:
        body = await read_body()
        req = await service.parse(body, parse_rerank_request, service.settings.max_request_inputs, style)
        model = await find_model(registry, req.model) if req.model else the_reranker(registry)
        reranker(model)
        service.admit(model)
        pairs = [(req.query, d) for d in req.documents]
        pending = text_request(pairs, model.schema, service.deadline(), key=("pairs",))
        result = await service.submit(model, pending)
        name = model.manifest.postprocessing.get("output") if model.manifest.postprocessing else None
        logits = result.outputs[name if name in result.outputs else model.output_names[0]]
        values = logits if req.raw_scores else result.outputs.get("scores", logits)
        return req, model, np.asarray(values, np.float32).reshape(len(pairs), -1)[:, 0], pending.tokenized

    def ranked(req: RerankRequest, scores: np.ndarray) -> list[int]:
        order: list[int] = np.argsort(-scores, kind="stable").tolist()  # best first, ties in input order, a NaN last
        return order[: req.top_n] if req.top_n is not None else order

    async def tei(tail: str, headers: RawHeaders, read_body: ReadBody) -> Reply:
        req, _, scores, _ = await score("tei", read_body)
        out = [{"index": i, "score": float(scores[i]), **({"text": req.documents[i]} if req.return_documents else {})}
               for i in ranked(req, scores)]
        return dumps(out), JSON_HEADERS

    async def cohere(tail: str, headers: RawHeaders, read_body: ReadBody) -> Reply:
        req, model, scores, tokens = await score("cohere", read_body)
        results = [{"index": i, "relevance_score": float(scores[i]),
                    **({"document": {"text": req.documents[i]}} if req.return_documents else {})}
                   for i in ranked(req, scores)]
        return dumps({"id": str(uuid.uuid4()), "model": model.model_id, "results": results,
                      "meta": {"billed_units": {"search_units": 1}}, "usage": {"total_tokens": tokens}}), JSON_HEADERS

    return [FastRoute("/rerank", "", tei, exact=True), FastRoute("/v1/rerank", "", cohere, exact=True)]
