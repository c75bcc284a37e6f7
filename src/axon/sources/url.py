"""Install a single ``.onnx`` file from an http(s) URL: resumable, retried; a large file in
parallel parts where the server serves ranges (:mod:`axon.sources.ranged`), else one stream."""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from axon import __version__
from axon.errors import InvalidModelError, SourceError, UsageError
from axon.reporting import Reporter
from axon.sources.base import FetchResult, HashingWriter, PartialDownload, check_digest, disk_full
from axon.sources.ranged import DEFAULT_CONNECTIONS, RANGED_ABOVE, Probe, fetch_ranged, probe_answer
from axon.store.blobs import BlobStore
from axon.store.fastio import FileDigest

__all__ = ["UrlSource"]

CHUNK = 1 << 20
TIMEOUT_S = 30.0
RETRIES = 5
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    pass


class UrlSource:
    kind = "url"

    def __init__(self, url: str, downloads_dir: Path, *, sha256: str | None = None,
                 retries: int = RETRIES, backoff_s: float = 0.5, connections: int = DEFAULT_CONNECTIONS,
                 part_bytes: int | None = None, ranged_above: int = RANGED_ABOVE,
                 blobs: BlobStore | None = None) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"Unsupported URL {url!r}: only http:// and https:// are supported.")
        if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
            raise UsageError(f"--sha256 {sha256!r} is not a 64-character hex digest.")
        self.url = url
        self.blobs = blobs  # with --sha256, a file already stored is placed, not downloaded
        self.sha256 = sha256.lower() if sha256 else None
        self.retries = retries
        self.backoff_s = backoff_s
        self.connections = connections
        self.part_bytes = part_bytes  # None: about four parts per connection
        self.ranged_above = ranged_above
        name = urllib.parse.unquote(PurePosixPath(parsed.path).name)
        if not name or "/" in name or name in (".", "..") or name.startswith("."):
            raise UsageError(f"Cannot tell a file name from URL {url!r}.",
                             hint="Use a URL whose path ends in the model's file name, e.g. …/model.onnx")
        if not name.lower().endswith(".onnx"):
            raise InvalidModelError(f"URL {url!r} does not name an .onnx file ({name!r}).",
                                    hint="Only single .onnx files can be installed from a URL; download archives "
                                    "yourself and use --from ./dir")
        self.filename = name
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        self.partial = PartialDownload(downloads_dir, key)

    def describe(self) -> str:
        return self.url

    def _open(self, headers: dict[str, str]) -> http.client.HTTPResponse:
        req = urllib.request.Request(self.url, headers={"User-Agent": f"axon/{__version__}", **headers})
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=TIMEOUT_S)
            return response
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                raise
            exc.close()  # the error carries the open response: release its socket now
            if exc.code in RETRY_STATUSES:
                raise _Retryable(f"HTTP {exc.code}") from exc
            what = {401: "authentication required", 403: "access denied", 404: "not found",
                    410: "gone"}.get(exc.code, exc.reason)
            raise SourceError(f"Download of {self.url!r} failed: HTTP {exc.code} ({what}).",
                              hint="Check the URL (and any credentials it needs).") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(str(reason)) from exc

    def fetch(self, staging: Path, reporter: Reporter) -> FetchResult:
        stored = self.blobs.find(self.sha256) if self.blobs is not None and self.sha256 else None
        if stored is not None and self.blobs is not None:
            reporter.stage(f"{self.filename} ({stored.size} bytes, sha256 {stored.sha256[:12]}…) is already in the "
                           "cache: not downloaded again")
            self.blobs.place(stored, staging / self.filename)
            return FetchResult(source={"type": "url", "url": self.url, "etag": None},
                               digests={self.filename: stored}, entrypoint=self.filename,
                               reused={self.filename: stored})
        found = self._probe(reporter)
        if found is not None and found.ranges and found.size is not None and found.size >= self.ranged_above \
                and self.connections > 1:
            return self._fetch_ranged(found, staging, reporter)
        return self._fetch_stream(staging, reporter)

    def _probe(self, reporter: Reporter) -> Probe | None:
        """Whether the server serves parts (and the URL they come from): None when the probe
        itself fails (the single stream then retries and reports as it always has)."""
        try:
            resp = self._open({"Range": "bytes=0-0", "Accept-Encoding": "identity"})  # a 404 is refused here
        except _Retryable as exc:
            reporter.stage(f"no ranged download ({exc}); one stream")
            return None
        except urllib.error.HTTPError as exc:  # 416: an empty file
            exc.close()
            return None
        with resp:
            return probe_answer(resp)

    def _fetch_ranged(self, found: Probe, staging: Path, reporter: Reporter) -> FetchResult:
        digest, _ = fetch_ranged(found, self.partial, {"url": self.url}, self.filename, reporter,
                                 connections=self.connections, part_bytes=self.part_bytes, retries=self.retries,
                                 backoff_s=self.backoff_s)
        return self._finish(staging, digest, found.etag)

    def _fetch_stream(self, staging: Path, reporter: Reporter) -> FetchResult:
        validator = {"url": self.url}
        attempt = 0
        etag = None
        with self.partial.open(validator) as (f, have):
            writer = HashingWriter(f)
            if have:
                reporter.stage(f"resuming download at {have} bytes")
                writer.absorb_existing()
            while True:
                try:
                    etag = self._download_once(writer, reporter)
                    break
                except _Retryable as exc:
                    attempt += 1
                    if attempt > self.retries:
                        raise SourceError(
                            f"Download of {self.url!r} failed after {self.retries} retries: {exc}.",
                            hint="Check the network and run the same command again: it resumes where it stopped.",
                        ) from None
                    delay = self.backoff_s * 2 ** (attempt - 1)
                    reporter.warn(f"download interrupted ({exc}); retry {attempt}/{self.retries} in {delay:.1f}s")
                    time.sleep(delay)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise disk_full(exc, self.partial.dir) from exc
                    raise
            digest = writer.digest()
        return self._finish(staging, digest, etag)

    def _finish(self, staging: Path, digest: FileDigest, etag: str | None) -> FetchResult:
        """Check the file against --sha256 (nothing is kept if it fails: the next run starts
        clean), then move it into *staging*."""
        try:
            if self.sha256 is not None:
                check_digest(self.filename, "sha256", self.sha256, digest.sha256, self.url)
        except Exception:
            self.partial.discard()
            raise
        self.partial.finish_into(staging / self.filename)
        return FetchResult(source={"type": "url", "url": self.url, "etag": etag}, digests={self.filename: digest},
                           entrypoint=self.filename)

    def _download_once(self, writer: HashingWriter, reporter: Reporter) -> str | None:
        have = writer.size
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = self._open(headers)
        except urllib.error.HTTPError as exc:  # 416: what we have is already the whole file
            exc.close()
            if exc.code == 416 and have:
                return exc.headers.get("ETag")
            raise SourceError(f"Download of {self.url!r} failed: HTTP {exc.code}.") from exc
        with resp:
            status = resp.status
            if have and status == 200:
                writer.seek(0)  # server ignored Range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            reporter.start(self.filename, total)
            reporter.advance(have)
            try:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                        writer.flush()
                        raise _Retryable(f"connection lost after {writer.size} bytes ({type(exc).__name__})") from exc
                    if not chunk:
                        break
                    writer.write(chunk)
                    reporter.advance(len(chunk))
            finally:
                reporter.finish()
            if total is not None and writer.size != total:
                raise _Retryable(f"short body: {writer.size} of {total} bytes")
            writer.flush()
            os.fsync(writer.fileno())  # durable before the part is renamed into staging
            return resp.headers.get("ETag")
