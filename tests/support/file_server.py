"""A plain HTTP file server for URL installs: Range requests, ETags, injected failures, throttling."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # drop the connection once after N bytes
    fail_status: dict[str, list[int]] = field(default_factory=dict)  # statuses to answer first, in order
    throttle_bps: int | None = None  # serve slowly (bytes per second), e.g. to kill a client mid-way
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        rng = request.headers.get("range")
        self.requests.append((name, rng))
        statuses = self.fail_status.get(name)
        if statuses:
            return Response(b"try later", status_code=statuses.pop(0))
        data = self.files.get(name)
        if data is None:
            return Response(b"not found", status_code=404)
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        start, status = 0, 200
        if rng and rng.startswith("bytes=") and not self.ignore_range:
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}", **headers})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        drop = self.drop_after.pop(name, None)
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
