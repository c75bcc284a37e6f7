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

from starlette.types import ASGIApp, Receive, Scope, Send

from mlos_core.errors import ApiError, ErrorBody, RawHeaders, api_error_body, render_error
from mlos_core.protocol import HandedOffBody
from mlos_core.wire import Body, ClientGone, read_asgi_large

__all__ = ["MAX_LARGE_BODIES", "FastPath", "FastRoute", "Handler", "ReadBody", "Reply", "release_memory"]

log = logging.getLogger("mlos_core.app")

Reply = tuple[bytes, RawHeaders]  # body, response headers (content-type included; content-length is added)
ReadBody = Callable[[], Awaitable[Body]]
Handler = Callable[[str, RawHeaders, ReadBody], Awaitable[Reply]]

# At most MAX_LARGE_BODIES bodies above LARGE_BODY_BYTES per process are read or parsed at once: a
# further one gets 503 before it is read, so memory stays bounded by MAX_LARGE_BODIES x
# --max-body-bytes however many clients upload.
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


class FastRoute(NamedTuple):
    """``POST <prefix><tail><suffix>`` goes to ``handler(tail, request headers, read_body)``; the
    handler reads the body only once it knows it will serve the request (a full queue answers
    503 without waiting for a body). *exact*: the path is *prefix* itself (the tail is empty).
    *errors*: how this route's errors are written (default: the API's own shape)."""

    prefix: str
    suffix: str
    handler: Handler
    exact: bool = False
    errors: ErrorBody = api_error_body

    def matches(self, path: str) -> bool:
        if self.exact:
            return path == self.prefix
        return path.startswith(self.prefix) and path.endswith(self.suffix) \
            and len(path) > len(self.prefix) + len(self.suffix)


class FastPath:
    """ASGI app: a POST matching one of *routes* is answered by its handler (which fails with
    ApiError for the client to see); everything else goes to *app*."""

    def __init__(self, app: ASGIApp, routes: list[FastRoute], max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.registry: Any = None  # the app's model registry, for an engine's health check (create_app sets it)
        self.large_bodies = 0  # large bodies being read or handled now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        except Exception as exc:
            if not isinstance(exc, ApiError):
                log.exception("inference request failed")
            status, headers, payload = render_error(exc, route.errors)
            if not body_read and (b"expect", b"100-continue") in ((k, v.lower()) for k, v in scope["headers"]):
                # Answered before "100 Continue": the client will not send the body the parser
                # waits for, so the next request on this connection would be read as that body.
                headers = [*headers, (b"connection", b"close")]
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
