"""API errors: one class, one renderer, one JSON shape ``{"status": "error", "code", "message"}``.

:func:`render_error` is the only place an error becomes an answer: the Starlette routes
(:func:`api_error_handler`), the plain-ASGI fast path and the connection-level answers
(``protocol.py``) all go through it, so a client sees the same bytes whichever path answered.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["JSON_HEADERS", "ApiError", "ErrorBody", "RawHeaders", "api_error_body", "api_error_handler",
           "error_response", "render_error"]

RawHeaders = list[tuple[bytes, bytes]]
ErrorBody = Callable[[int, str, str], bytes]  # (status, code, message) -> the JSON error a route's clients expect

JSON_HEADERS: RawHeaders = [(b"content-type", b"application/json")]
INTERNAL = "internal server error (see the server log)"


class ApiError(Exception):
    """An error the client should see: HTTP status, stable machine code, one-line message."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def __reduce__(self) -> tuple[type[ApiError], tuple[int, str, str], dict[str, dict[str, str]]]:
        # picklable (requests are parsed in a helper process): rebuilt from the constructor's arguments
        return ApiError, (self.status, self.code, self.message), {"headers": self.headers}


def api_error_body(status: int, code: str, message: str) -> bytes:
    """The API's own error shape (*status* is not part of it; other shapes use it)."""
    return orjson.dumps({"status": "error", "code": code, "message": message, "error": message})


def render_error(exc: BaseException, errors: ErrorBody = api_error_body) -> tuple[int, RawHeaders, bytes]:
    """(status, headers, body) of the answer to *exc*: an ApiError as it says, anything else a 500
    that tells the client nothing more (the server log has the traceback)."""
    if not isinstance(exc, ApiError):
        return 500, JSON_HEADERS, errors(500, "internal", INTERNAL)
    headers = JSON_HEADERS + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return exc.status, headers, errors(exc.status, exc.code, exc.message)


def error_response(status: int, code: str, message: str) -> Response:
    """A Starlette response for an error that is not an ApiError (routing's own 404 and 405)."""
    return _response(*render_error(ApiError(status, code, message)))


def _response(status: int, headers: RawHeaders, body: bytes) -> Response:
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", b"%d" % len(body))]
    return response


async def api_error_handler(request: Request, exc: Exception) -> Response:
    return _response(*render_error(exc))
