"""Request bodies as JSON: parsed strictly (orjson), refused with the API's 400s."""

from __future__ import annotations

from typing import Any

from mlos_core.errors import ApiError
from mlos_core.jsonio import loads

__all__ = ["MAX_REQUEST_CHARS", "check_text_budget", "json_object", "parse_json"]

# Characters one request's texts may hold in all (a pair counts both of its texts). Tokenizing is
# linear in them and runs before truncation: without a bound a 1 MB query against 64 documents
# is 64 MB to tokenize, half a minute of a batcher's CPU for one small request.
MAX_REQUEST_CHARS = 8 << 20


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
