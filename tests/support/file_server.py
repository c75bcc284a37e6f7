"""A plain HTTP file server for URL installs: Range requests, ETags, injected failures, throttling."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field of an answer carrying *body* (RFC 9530)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # drop the connection once after N bytes
    fail_status: dict[str, list[int]] = field(default_factory=dict)  # statuses to answer first, in order
    throttle_bps: int | None = None  # serve slowly (bytes per second), e.g. to kill a client mid-way
    ignore_range: bool = False
    corrupt_at: dict[str, int] = field(default_factory=dict)  # once: a part starting here comes back flipped
    drop_at: dict[str, int] = field(default_factory=dict)  # once: a part starting here loses its connection
    content_digest: bool = False  # each answer carries its bytes' Content-Digest (RFC 9530), before any corruption
    redirect: dict[str, str] = field(default_factory=dict)  # name -> the path it redirects to (a CDN)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    authorization: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Authorization header)

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        rng = request.headers.get("range")
        self.requests.append((name, rng))
        self.authorization.append((name, request.headers.get("authorization")))
        if name in self.redirect:
            return Response(b"", status_code=302, headers={"Location": self.redirect[name]})
        statuses = self.fail_status.get(name)
        if statuses:
            return Response(b"try later", status_code=statuses.pop(0))
        data = self.files.get(name)
        if data is None:
            return Response(b"not found", status_code=404)
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        start, end, status = 0, len(data) - 1, 200
        if_range = request.headers.get("if-range")
        if rng and rng.startswith("bytes=") and not self.ignore_range and if_range in (None, etag):
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}", **headers})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if self.content_digest:
            headers["Content-Digest"] = content_digest(body)
        if status == 206 and self.corrupt_at.get(name) == start:
            del self.corrupt_at[name]
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        headers["Content-Length"] = str(len(body))
        drop = self.drop_after.pop(name, None) if len(body) > self.drop_after.get(name, len(body)) else None
        if status == 206 and self.drop_at.get(name) == start:
            del self.drop_at[name]
            drop = min(64 * 1024, len(body) // 2)
        if drop is not None or self.throttle_bps:
            return StreamingResponse(self._stream(body, drop), status_code=status, headers=headers)
        return Response(body, status_code=status, headers=headers)

    async def _stream(self, body: bytes, drop: int | None) -> AsyncIterator[bytes]:
        step = 64 * 1024
        for i in range(0, len(body), step):
            if drop is not None and i >= drop:
                raise ConnectionResetError("simulated network failure")
            yield body[i : i + step]
            if self.throttle_bps:
                await asyncio.sleep(step / self.throttle_bps)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/files/{name:path}", self.serve)])
