"""The inference hot paths as plain ASGI, in front of the Starlette app.

``POST /models/<id>/inference`` and ``POST /v2/models/<name>[/versions/<v>]/infer`` are the
requests clients send thousands of times a second; through Starlette's middleware, routing,
``Request`` and ``Response`` objects they cost the event loop about as much as the handlers' own
work (measured: 187 -> 87-108 us of event-loop CPU per request, 74 -> 35 us per rejection). Here each
is read, answered or failed in one coroutine; every other request (and the lifespan) goes to the
wrapped app unchanged.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from mlos_core.errors import ApiError, error_body
from mlos_core.protocol import HAND_OFF, HandedOffBody

__all__ = ["LARGE_BODY_BYTES", "MAX_LARGE_BODIES", "Body", "ClientGone", "FastPath", "FastRoute", "ReadBody",
           "Reply", "read_asgi_body", "read_asgi_chunks", "read_asgi_large", "release_memory"]

log = logging.getLogger("mlos_core.app")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Reply = tuple[bytes, Headers]  # body, response headers (content-type included; content-length is added)
Body = list[bytes] | HandedOffBody  # the pieces it arrived in, or (large) a socket to read it from
ReadBody = Callable[[], Awaitable[Body]]
Handler = Callable[[str, Headers, ReadBody], Awaitable[Reply]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]

# A body above this is parsed in a helper process (parse_helper.py), and at most MAX_LARGE_BODIES
# such bodies per process are read or parsed at once: a further one gets 503 before it is read,
# so memory stays bounded by MAX_LARGE_BODIES x --max-body-bytes however many clients upload.
LARGE_BODY_BYTES = 256 << 10
MAX_LARGE_BODIES = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc): after a large body, whose bytes were
    copied several times on their way, the heap otherwise keeps the high-water mark (measured:
    server RSS +60% after a minute of 60 MB bodies, flat with this)."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


ErrorBody = Callable[[int, str, str], bytes]  # (status, code, message) -> the JSON error a route's clients expect


def _api_error_body(status: int, code: str, message: str) -> bytes:
    return error_body(code, message)


class FastRoute(NamedTuple):
    """``POST <prefix><tail><suffix>`` goes to ``handler(tail, request headers, read_body)``; the
    handler reads the body only once it knows it will serve the request (a full queue answers
    503 without waiting for a body). *exact*: the path is *prefix* itself (the tail is empty).
    *errors*: how this route's errors are written (default: the API's own shape)."""

    prefix: str
    suffix: str
    handler: Handler
    exact: bool = False
    errors: ErrorBody = _api_error_body

    def matches(self, path: str) -> bool:
        if self.exact:
            return path == self.prefix
        return path.startswith(self.prefix) and path.endswith(self.suffix) \
            and len(path) > len(self.prefix) + len(self.suffix)


class ClientGone(Exception):
    """The client disconnected before its body arrived; there is nobody to answer."""


async def read_asgi_chunks(scope: Message, receive: Receive, limit: int,
                           on_large: Callable[[], None] | None = None) -> list[bytes]:
    """The whole request body, in the pieces it arrived in (a large body is never joined here),
    refused with 413 as soon as it is known to exceed *limit*. *on_large* is called once, before
    any more of it is read, when the body is known to exceed LARGE_BODY_BYTES (from
    Content-Length, or as a chunked body arrives); it may raise."""
    body = await read_asgi_large(scope, receive, limit, on_large, hand_off=False)
    assert isinstance(body, list)
    return body


async def read_asgi_large(scope: Message, receive: Receive, limit: int,
                          on_large: Callable[[], None] | None = None, *, hand_off: bool = True) -> Body:
    """:func:`read_asgi_chunks`, except that a large Content-Length body is not read at all when
    the connection can hand it off (protocol.py): the caller gets the socket to read it from."""
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
                    return handed  # type: ignore[no-any-return]
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
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


async def read_asgi_body(scope: Message, receive: Receive, limit: int) -> bytes:
    """The whole request body as one bytes object (small bodies: the Starlette routes)."""
    chunks = await read_asgi_chunks(scope, receive, limit)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FastPath:
    """ASGI app: a POST matching one of *routes* is answered by its handler (which fails with
    ApiError for the client to see); everything else goes to *app*."""

    def __init__(self, app: ASGIApp, routes: list[FastRoute], max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.large_bodies = 0  # large bodies being read or handled now

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        for route in self.routes:
            if route.matches(path):
                break
        else:
            return await self.app(scope, receive, send)
        large = False

        def take_large_slot() -> None:
            nonlocal large
            if self.large_bodies >= MAX_LARGE_BODIES:
                raise ApiError(503, "busy", f"{MAX_LARGE_BODIES} large request bodies are being processed; retry "
                               "shortly", headers={"Retry-After": "1"})
            self.large_bodies += 1
            large = True

        handed: HandedOffBody | None = None  # closed here if the handler did not pass it on
        body_read = False

        async def read_body() -> Body:
            nonlocal handed, body_read
            body = await read_asgi_large(scope, receive, self.max_body_bytes, take_large_slot)
            if isinstance(body, HandedOffBody):
                handed = body
            body_read = True
            return body

        try:
            tail = "" if route.exact else path[len(route.prefix):len(path) - len(route.suffix)]
            payload, headers = await route.handler(tail, scope["headers"],
                                                   read_body)
            status = 200
        except ClientGone:
            return
        except ApiError as exc:
            status, payload, headers = exc.status, route.errors(exc.status, exc.code, exc.message), JSON_HEADERS
            if exc.headers:
                headers = JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            if not body_read and (b"expect", b"100-continue") in ((k, v.lower()) for k, v in scope["headers"]):
                # Answered before "100 Continue": the client will not send the body the parser
                # waits for, so the next request on this connection would be read as that body.
                headers = [*headers, (b"connection", b"close")]
        except Exception:
            log.exception("inference request failed")
            payload = route.errors(500, "internal", "internal server error (see the server log)")
            status, headers = 500, JSON_HEADERS
        finally:
            if large:
                self.large_bodies -= 1
            if handed is not None:  # normally already passed on (and closed) by the parse
                handed.close()
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})
        if large:
            release_memory()
