"""The inference hot paths as plain ASGI, in front of the Starlette app.

``POST /models/<id>/inference`` and ``POST /v2/models/<name>[/versions/<v>]/infer`` are the
requests clients send thousands of times a second; through Starlette's middleware, routing,
``Request`` and ``Response`` objects they cost the event loop about as much as the handlers' own
work (measured: 187 -> 87-108 us of event-loop CPU per request, 74 -> 35 us per rejection). Here each
is read, answered or failed in one coroutine; every other request (and the lifespan) goes to the
wrapped app unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from mlos_core.errors import ApiError, error_body

__all__ = ["ClientGone", "FastPath", "FastRoute", "ReadBody", "Reply", "read_asgi_body"]

log = logging.getLogger("mlos_core.app")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Reply = tuple[bytes, Headers]  # body, response headers (content-type included; content-length is added)
ReadBody = Callable[[], Awaitable[bytes]]
Handler = Callable[[str, Headers, ReadBody], Awaitable[Reply]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


class FastRoute(NamedTuple):
    """``POST <prefix><tail><suffix>`` goes to ``handler(tail, request headers, read_body)``; the
    handler reads the body only once it knows it will serve the request (a full queue answers
    503 without waiting for a body)."""

    prefix: str
    suffix: str
    handler: Handler


class ClientGone(Exception):
    """The client disconnected before its body arrived; there is nobody to answer."""


async def read_asgi_body(scope: Message, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed *limit*."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ApiError(413, "body_too_large",
                           f"request body of {int(value)} bytes exceeds the {limit}-byte limit")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message holds the whole body
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the {limit}-byte limit")
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class FastPath:
    """ASGI app: a POST matching one of *routes* is answered by its handler (which fails with
    ApiError for the client to see); everything else goes to *app*."""

    def __init__(self, app: ASGIApp, routes: list[FastRoute], max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        for route in self.routes:
            if path.startswith(route.prefix) and path.endswith(route.suffix) \
                    and len(path) > len(route.prefix) + len(route.suffix):
                break
        else:
            return await self.app(scope, receive, send)

        async def read_body() -> bytes:
            return await read_asgi_body(scope, receive, self.max_body_bytes)

        try:
            payload, headers = await route.handler(path[len(route.prefix):-len(route.suffix)], scope["headers"],
                                                   read_body)
            status = 200
        except ClientGone:
            return
        except ApiError as exc:
            status, payload, headers = exc.status, error_body(exc.code, exc.message), JSON_HEADERS
            if exc.headers:
                headers = JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        except Exception:
            log.exception("inference request failed")
            status, payload, headers = 500, error_body("internal", "internal server error (see the server log)"), \
                JSON_HEADERS
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})
