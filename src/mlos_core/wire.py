"""The wire: request bodies in, JSON out.

* Bodies are read from ASGI under the size limit (413 as soon as a body is known to exceed it); a
  large ``Content-Length`` body can instead be handed off by the connection (``protocol.py``).
* JSON is parsed strictly and written through orjson: numpy arrays straight from their buffers (an
  embedding of 384 float32 values renders in about 7 us instead of about 180 us with
  ``json.dumps(arr.tolist())`` on the event loop, with the shortest text that reads back to the
  same float32).
* Outputs are encoded once for every route (``dtype_name``, ``outputs_json``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from mlos_core.errors import ApiError
from mlos_core.protocol import HAND_OFF, HandedOffBody

__all__ = ["ADMIN_BODY_BYTES", "LARGE_BODY_BYTES", "MAX_REQUEST_CHARS", "Body", "ClientGone", "JSONResponse",
           "check_text_budget", "dtype_name", "dumps", "json_object", "loads", "outputs_json", "parse_json",
           "read_asgi_body", "read_asgi_large", "read_json"]

# A body above this is parsed in a helper process (parse_helper.py), never on the event loop.
LARGE_BODY_BYTES = 256 << 10
ADMIN_BODY_BYTES = 64 << 10  # admin calls carry a model id or a path; nothing bigger is parsed for them

# Characters one request's texts may hold in all (a pair counts both of its texts). Tokenizing is
# linear in them and runs before truncation: without a bound a 1 MB query against 64 documents
# is 64 MB to tokenize, half a minute of a batcher's CPU for one small request.
MAX_REQUEST_CHARS = 8 << 20

Body = list[bytes] | HandedOffBody  # the pieces it arrived in, or (large) a socket to read it from

loads = orjson.loads  # raises orjson.JSONDecodeError, a ValueError


# --- reading --------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client disconnected before its body arrived; there is nobody to answer."""


async def read_asgi_large(scope: Scope, receive: Receive, limit: int,
                          on_large: Callable[[], None] | None = None, *, hand_off: bool = True) -> Body:
    """The whole request body, in the pieces it arrived in (a large body is never joined here),
    refused with 413 as soon as it is known to exceed *limit*. *on_large* is called once, before
    any more of it is read, when the body is known to exceed LARGE_BODY_BYTES (from
    Content-Length, or as a chunked body arrives); it may raise. With *hand_off*, a large
    Content-Length body is not read at all when the connection can hand it off: the caller gets
    the socket to read it from."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            declared = int(value)
            if declared > limit:
                raise ApiError(413, "body_too_large",
                               f"request body of {declared} bytes exceeds the {limit}-byte limit")
            if declared > LARGE_BODY_BYTES and on_large is not None:
                on_large()
                on_large = None
                take = scope.get("extensions", {}).get(HAND_OFF) if hand_off else None
                if take is not None and (handed := take()) is not None:
                    assert isinstance(handed, HandedOffBody)
                    return handed
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message holds the whole body
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the {limit}-byte limit")
        return [body]
    chunks, size = [body], len(body)
    while True:
        if size > LARGE_BODY_BYTES and on_large is not None:
            on_large()
            on_large = None
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks


async def read_asgi_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body as one bytes object, never handed off (small bodies: the Starlette routes)."""
    chunks = await read_asgi_large(scope, receive, limit, hand_off=False)
    assert isinstance(chunks, list)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request, limit: int = ADMIN_BODY_BYTES) -> Any:
    """The JSON value of a Starlette request's body, under the same limit checks as the fast path's."""
    try:
        return parse_json(await read_asgi_body(request.scope, request.receive, limit))
    except ClientGone:
        raise ClientDisconnect from None


# --- parsing --------------------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    """The body's JSON value (an empty body is ``{}``)."""
    try:
        return loads(body) if body else {}
    except ValueError as exc:  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "bad_json", f"request body is not valid JSON ({str(exc).splitlines()[0]})") from None


def json_object(body: bytes, expected: str) -> dict[str, Any]:
    """The body's JSON object; anything else is a 400 saying what was *expected*."""
    value = parse_json(body)
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", f"the body must be a JSON object {expected}")
    return value


def check_text_budget(texts: list[Any]) -> None:
    """Refuse (400) texts that hold more than MAX_REQUEST_CHARS characters in all."""
    total = 0
    for t in texts:
        total += len(t) if isinstance(t, str) else sum(len(x) for x in t)
        if total > MAX_REQUEST_CHARS:
            raise ApiError(400, "text_too_large", f"the request's texts hold more than {MAX_REQUEST_CHARS} "
                           "characters in all (a pair counts both texts; a rerank query once per document); "
                           "send fewer or shorter texts per request")


# --- writing --------------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    # orjson hands over what it cannot write natively: non-contiguous arrays, object arrays.
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes; NaN and infinities become null, as JSON has no spelling for them."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


_DTYPE_NAMES: dict[np.dtype[Any], str] = {}


def dtype_name(dtype: np.dtype[Any]) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:  # numpy computes .name through Python-level subclass checks on every access
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def outputs_json(outputs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, Any]:
    """The native API's ``outputs``: ``{name: {shape, dtype, data}}`` (jsonio writes the arrays)."""
    return {name: {"shape": list(arr.shape), "dtype": dtype_name(arr.dtype), "data": arr}
            for name, arr in outputs.items() if wanted is None or name in wanted}
