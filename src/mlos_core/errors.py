"""API errors: one class, one handler, one JSON shape ``{"status": "error", "code", "message"}``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mlos_core.jsonio import dumps

__all__ = ["ApiError", "api_error_handler", "error_body", "error_response"]


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


def error_body(code: str, message: str) -> bytes:
    return dumps({"status": "error", "code": code, "message": message, "error": message})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


async def api_error_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    return error_response(500, "internal", "internal server error (see the server log)")
