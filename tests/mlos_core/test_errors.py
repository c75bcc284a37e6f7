"""One error renderer: the Starlette routes and the plain-ASGI fast path answer an error with the
same bytes (status, headers, body), an ApiError as it says and anything else as a bare 500."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlos_core.errors import ApiError, api_error_handler, render_error
from mlos_core.fastpath import FastPath, FastRoute, ReadBody, Reply

ERRORS = [
    ApiError(401, "unauthorized", "send a token", headers={"WWW-Authenticate": "Bearer"}),
    ApiError(503, "overloaded", "the queue is full; retry", headers={"Retry-After": "1"}),
    ApiError(400, "bad_json", "request body is not valid JSON (unexpected character: line 1 column 1 (char 0))"),
    RuntimeError("a bug with a secret path /etc/shadow in its message"),
]


def call(app: Any, method: str, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    with contextlib.suppress(RuntimeError):  # Starlette re-raises an unhandled exception for the log, once answered
        asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start["headers"]), body


def apps(exc: BaseException) -> tuple[Any, Any]:
    async def starlette_route(request: Request) -> Response:
        raise exc

    async def fast_handler(tail: str, headers: Any, read_body: ReadBody) -> Reply:
        raise exc

    starlette = Starlette(routes=[Route("/slow", starlette_route)],
                          exception_handlers={ApiError: api_error_handler, Exception: api_error_handler})
    return starlette, FastPath(starlette, [FastRoute("/fast", "", fast_handler, exact=True)], 1 << 20)


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: getattr(e, "code", type(e).__name__))
def test_starlette_and_the_fast_path_render_an_error_identically(exc: BaseException) -> None:
    starlette, fast = apps(exc)
    slow = call(starlette, "GET", "/slow")
    quick = call(fast, "POST", "/fast")
    assert quick == slow
    status, headers, body = render_error(exc)
    assert quick == (status, [*headers, (b"content-length", b"%d" % len(body))], body)


def test_what_an_error_renders_to() -> None:
    status, headers, body = render_error(ERRORS[0])
    assert status == 401
    assert (b"www-authenticate", b"Bearer") in headers and (b"content-type", b"application/json") in headers
    assert body == b'{"status":"error","code":"unauthorized","message":"send a token","error":"send a token"}'
    status, _, body = render_error(ERRORS[-1])
    assert status == 500 and b"shadow" not in body and b'"code":"internal"' in body
