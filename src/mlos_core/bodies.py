"""Request bodies as JSON: parsed strictly (orjson), refused with the API's 400s."""

from __future__ import annotations

from typing import Any

from mlos_core.errors import ApiError
from mlos_core.jsonio import loads

__all__ = ["json_object", "parse_json"]


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
