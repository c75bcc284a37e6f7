"""A local HTTP server speaking the Hugging Face Hub endpoints that huggingface_hub calls.

Endpoints: ``/api/models/{repo}/revision/{rev}`` (with ``?blobs=true`` metadata),
``/api/models/{repo}/tree/{rev}[/{path}]``, and ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with
``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``, Range -> 206, and 4xx answers
carrying ``X-Error-Code`` as the real Hub does. Tests can make it serve corrupted bytes, drop a
connection mid-file, flip one CDN part in transit (with or without ``Content-Digest``), or gate a
repo behind a token.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.file_server import content_digest

LFS_SUFFIXES = (".onnx", ".onnx_data", ".bin", ".safetensors", ".data")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > 10 * 1024


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated_token: str | None = None  # when set, file downloads need "Bearer <token>"


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    corrupt: set[tuple[str, str]] = field(default_factory=set)  # (repo, path): flip a byte when serving
    drop_after: dict[tuple[str, str], int] = field(default_factory=dict)  # drop the connection once after N bytes
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    blobs: dict[str, bytes] = field(default_factory=dict)  # what the CDN serves, by sha256
    throttle_bps: int | None = None  # each response (so each connection) at most this fast, as a CDN gives one
    cdn: bool = False  # LFS files redirect (302) to /cdn/<sha256>?sig=…, as the Hub's resolve URLs do
    drop_part_at: dict[str, int] = field(default_factory=dict)  # sha256 -> a CDN part starting here drops, once
    corrupt_part_at: dict[str, int] = field(default_factory=dict)  # sha256 -> a CDN part starting here is flipped, once
    content_digest: bool = False  # the CDN's parts carry their Content-Digest (RFC 9530), taken before corruption
    hold_small_s: float = 0.0  # a small file's GET waits this long first (so overlapping ones show)
    in_flight: int = 0
    max_in_flight: int = 0  # the most small-file GETs being answered at once

    # the real Hub knows its digests: hashing per request here would skew timings
    _digests: dict[tuple[str, bytes], str] = field(default_factory=dict)

    def _sha256(self, data: bytes) -> str:
        key = ("sha256", data)  # a bytes key hashes once (Python caches it on the object)
        if key not in self._digests:
            self._digests[key] = hashlib.sha256(data).hexdigest()
        return self._digests[key]

    def _blob_id(self, data: bytes) -> str:
        key = ("blob", data)
        if key not in self._digests:
            self._digests[key] = git_blob_sha1(data)
        return self._digests[key]

    def add_commit(self, repo_id: str, files: dict[str, bytes], *, ref: str = "main") -> str:
        repo = self.repos.setdefault(repo_id, FakeRepo())
        h = hashlib.sha1(repo_id.encode(), usedforsecurity=False)
        for path in sorted(files):
            h.update(path.encode() + b"\0" + bytes.fromhex(self._sha256(files[path])))
        h.update(str(len(repo.commits)).encode())
        sha = h.hexdigest()
        repo.commits[sha] = dict(files)
        repo.refs[ref] = sha
        return sha

    def add_dir(self, repo_id: str, src: Path, *, ref: str = "main") -> str:
        """A commit of every file under *src* (a save_pretrained / save directory), paths relative to it."""
        return self.add_commit(repo_id, {f.relative_to(src).as_posix(): f.read_bytes()
                                         for f in sorted(src.rglob("*")) if f.is_file()}, ref=ref)

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Code": code})

    def _resolve(self, repo_id: str, rev: str) -> tuple[FakeRepo | None, str | None, Response | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, None, self._error(401, "RepoNotFound", "Repository not found")
        sha = repo.refs.get(rev) or (rev if rev in repo.commits else None)
        if sha is None:
            return repo, None, self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, sha, None

    def _sibling(self, path: str, data: bytes, blobs: bool) -> dict[str, object]:
        entry: dict[str, object] = {"rfilename": path}
        if blobs:
            entry["size"] = len(data)
            entry["blobId"] = self._blob_id(data)
            if is_lfs(path, data):
                entry["lfs"] = {"sha256": self._sha256(data), "size": len(data), "pointerSize": 134}
        return entry

    # --- endpoints ---------------------------------------------------------------------

    async def model_info(self, request: Request) -> Response:
        repo_id, rev = request.path_params["repo"], request.path_params["rev"]
        self.requests.append(("GET", request.url.path, None))
        repo, sha, err = self._resolve(repo_id, rev)
        if err is not None or repo is None or sha is None:
            return err or self._error(500, "Internal", "unreachable")
        blobs = request.query_params.get("blobs", "").lower() == "true"
        files = repo.commits[sha]
        return JSONResponse({
            "_id": hashlib.md5(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
            "gated": "manual" if repo.gated_token else False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": ["onnx"], "library_name": "onnx", "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z", "cardData": {"license": "apache-2.0"},
            "siblings": [self._sibling(p, files[p], blobs) for p in sorted(files)],
        })

    async def tree(self, request: Request) -> Response:
        repo_id, rev = request.path_params["repo"], request.path_params["rev"]
        prefix = request.path_params.get("path", "").strip("/")
        repo, sha, err = self._resolve(repo_id, rev)
        if err is not None or repo is None or sha is None:
            return err or self._error(500, "Internal", "unreachable")
        out = []
        for path, data in sorted(repo.commits[sha].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            entry: dict[str, object] = {"type": "file", "oid": self._blob_id(data), "size": len(data), "path": path}
            if is_lfs(path, data):
                entry["lfs"] = {"oid": self._sha256(data), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return JSONResponse(out)

    async def resolve(self, request: Request) -> Response:
        repo_id, rev, path = request.path_params["repo"], request.path_params["rev"], request.path_params["file"]
        rng = request.headers.get("range")
        self.requests.append((request.method, request.url.path, rng))
        repo, sha, err = self._resolve(repo_id, rev)
        if err is not None or repo is None or sha is None:
            return err or self._error(500, "Internal", "unreachable")
        if repo.gated_token and request.headers.get("authorization") != f"Bearer {repo.gated_token}":
            return self._error(401, "GatedRepo", "Access to this model is restricted")
        files = repo.commits[sha]
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        data = files[path]
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if is_lfs(path, data):
            sha256 = self._sha256(data)
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{self._blob_id(data)}"'
        if (repo_id, path) in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if self.cdn and is_lfs(path, data):
            sha256 = self._sha256(data)
            self.blobs[sha256] = data
            # another host, as the Hub's CDN is (so clients treat it as one): localhost for 127.0.0.1
            base = str(request.base_url).replace("//127.0.0.1:", "//localhost:")
            location = f"{base}cdn/{sha256}?sig={len(self.requests)}"  # signed anew every time
            return Response(b"", status_code=302, headers={**headers, "Location": location})
        if request.method == "HEAD":
            return Response(b"", headers={**headers, "Content-Length": str(len(data))})
        if self.hold_small_s and not is_lfs(path, data):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.hold_small_s)
            finally:
                self.in_flight -= 1
        return self._body(data, rng, headers, self.drop_after.pop((repo_id, path), None))

    async def cdn_blob(self, request: Request) -> Response:
        sha256, rng = request.path_params["sha256"], request.headers.get("range")
        self.requests.append((request.method, request.url.path, rng))
        data = self.blobs.get(sha256)
        if data is None:
            return Response(b"no such blob", status_code=404)
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return Response(b"", headers={**headers, "Content-Length": str(len(data))})
        drop, start = None, int(rng[6:].split("-")[0]) if rng and rng.startswith("bytes=") else None
        if start is not None and self.drop_part_at.get(sha256) == start:
            del self.drop_part_at[sha256]
            drop = 64 * 1024
        corrupt = start is not None and self.corrupt_part_at.get(sha256) == start
        if corrupt:
            del self.corrupt_part_at[sha256]
        return self._body(data, rng, headers, drop, corrupt=corrupt)

    def _body(self, data: bytes, rng: str | None, headers: dict[str, str], drop: int | None, *,
              corrupt: bool = False) -> Response:
        start, end, status = 0, len(data) - 1, 200
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        body = data[start:end + 1]
        if self.content_digest:
            headers = {**headers, "Content-Digest": content_digest(body)}
        if corrupt:  # in transit: after the digest was taken
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        if drop is not None and drop < len(body):
            return StreamingResponse(_broken_stream(body, drop), status_code=status,
                                     headers={**headers, "Content-Length": str(len(body))})
        if self.throttle_bps:
            return StreamingResponse(_throttled(body, self.throttle_bps), status_code=status,
                                     headers={**headers, "Content-Length": str(len(body))})
        return Response(body, status_code=status, headers=headers)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/models/{repo:path}/revision/{rev}", self.model_info),
            Route("/api/models/{repo:path}/tree/{rev}/{path:path}", self.tree),
            Route("/api/models/{repo:path}/tree/{rev}", self.tree),
            Route("/cdn/{sha256}", self.cdn_blob, methods=["GET", "HEAD"]),
            Route("/{repo:path}/resolve/{rev}/{file:path}", self.resolve, methods=["GET", "HEAD"]),
        ])


async def _broken_stream(body: bytes, n: int) -> AsyncIterator[bytes]:
    yield body[:n]
    raise ConnectionResetError("simulated network failure")


async def _throttled(body: bytes, bps: int) -> AsyncIterator[bytes]:
    import time

    step, start = 256 * 1024, time.monotonic()
    for i in range(0, len(body), step):
        yield body[i : i + step]
        ahead = (i + step) / bps - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)
