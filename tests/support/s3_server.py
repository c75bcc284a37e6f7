"""A real S3 server for the tests: moto in server mode, in its own process on a free port, and a
proxy in front of it that drops conditional-write headers (a store that ignores them)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from tests.support.servers import serve_in_thread

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """``python -m moto.server`` on 127.0.0.1; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="us-east-1").client("s3", endpoint_url=endpoint)


def new_bucket(endpoint: str) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


DROPPED = {b"if-none-match", b"if-match"}


def condition_dropping_app(upstream: str) -> Any:
    """An ASGI proxy to *upstream* that forwards everything but If-None-Match and If-Match."""
    target = urlsplit(upstream)

    def forward(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, list[Any], bytes]:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["raw_path"].decode() + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in DROPPED]
        status, out_headers, out = await asyncio.to_thread(forward, scope["method"], path, headers, body)
        hop = {"transfer-encoding", "connection", "content-length"}
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers if k.lower() not in hop]
                    + [(b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})

    return app


@contextmanager
def condition_dropping_proxy(upstream: str) -> Iterator[str]:
    with serve_in_thread(condition_dropping_app(upstream)) as url:
        yield url
