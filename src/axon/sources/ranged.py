"""One large file fetched as N concurrent ``Range`` requests, resumable part by part.

A CDN gives one connection a fraction of the link (which is why Ollama pulls a blob in parts and
Hugging Face built hf_transfer): the file is cut into parts (about four per connection, 8 to 64
MiB), ``connections``
threads each fetch a part (``Range: bytes=a-b``) and write it where it belongs in the partial
file (``os.pwrite`` into a file of the final size), and a part is recorded as done in a sidecar
(``<key>.parts.json``, replaced atomically) only after its bytes are on disk, so a run killed
mid-way fetches only the parts that were not done. Every answer must be a ``206`` whose
``Content-Range`` is exactly the part asked for, from the same object (``If-Range`` with the
ETag the probe saw); a part that fails is retried with backoff, on its own.

Where the server gives a part's own digest (``Content-Digest``, RFC 9530, asked for with
``Want-Content-Digest``), a part whose bytes do not match it is a failed part like a dropped one:
fetched again alone, never recorded as done. Without one, a wrong part is only found by the
file's digest, and the whole file is refused.

Nothing here is trusted: the caller hashes the finished file in order and checks it against the
digest it expects (the Hub's LFS sha256, a ``--sha256``), as for a single stream.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axon import __version__
from axon.errors import DiskFullError, SourceError
from axon.reporting import Reporter
from axon.sources.base import HashingWriter, PartialDownload, disk_full
from axon.sources.content_digest import WANT_CONTENT_DIGEST, parse_content_digest
from axon.store.fastio import FileDigest

__all__ = ["DEFAULT_CONNECTIONS", "NETWORK_ERRORS", "RANGED_ABOVE", "Probe", "RangedFile", "default_part_bytes",
           "fetch_ranged", "probe", "probe_answer"]

DEFAULT_CONNECTIONS = 8
MIN_PART_BYTES = 8 << 20  # large enough that a request's round trip is noise
MAX_PART_BYTES = 64 << 20  # small enough that a lost part costs little, resumed or retried
RANGED_ABOVE = 32 << 20  # smaller files: one stream (parts would cost more round trips than they save)
CHUNK = 1 << 20
TIMEOUT_S = 30.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


# What a dropped, refused or broken connection raises (a part or a probe may succeed when asked again).
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, ssl.SSLError)


class _NoCredentialsElsewhere(urllib.request.HTTPRedirectHandler):
    """Redirects followed, but a token never goes to another host (a CDN's signed URL is its own
    credential): what requests does, and urllib does not."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            for name in ("Authorization", "Cookie"):
                new.remove_header(name)
        return new


_OPENER = urllib.request.build_opener(_NoCredentialsElsewhere)


class PartFailed(Exception):
    """A part that may succeed when asked again (a dropped connection, a 503, a short body)."""


@dataclass(frozen=True)
class Probe:
    url: str  # after redirects: the parts go straight there (a CDN), not through the redirect again
    size: int | None
    etag: str | None
    ranges: bool  # the server answered a one-byte Range with a 206 of the whole size


def probe(url: str, headers: dict[str, str]) -> Probe:
    """Ask for the first byte: a ``206`` with ``Content-Range: bytes 0-0/SIZE`` means ranges work;
    a ``200`` means the server ignores ``Range`` (one stream, then)."""
    req = urllib.request.Request(url, headers={"User-Agent": f"axon/{__version__}", **headers,
                                               "Range": "bytes=0-0", "Accept-Encoding": "identity"})
    with _OPENER.open(req, timeout=TIMEOUT_S) as resp:
        return probe_answer(resp)


def probe_answer(resp: http.client.HTTPResponse) -> Probe:
    """What the answer to ``Range: bytes=0-0`` says (the body, one byte or the whole file, is not read)."""
    final, etag = resp.geturl(), resp.headers.get("ETag")
    if resp.status == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if m and m.group(3) != "*" and int(m.group(1)) == 0:
            return Probe(final, int(m.group(3)), etag, True)
    length = resp.headers.get("Content-Length")
    return Probe(final, int(length) if resp.status == 200 and length and length.isdigit() else None, etag, False)


def default_part_bytes(size: int, connections: int) -> int:
    """About four parts per connection (a slow part then holds up little), within the bounds."""
    return max(MIN_PART_BYTES, min(MAX_PART_BYTES, -(-size // (4 * connections))))


class RangedFile:
    """Fetch *probe*'s object into the open file *fd* (created by the caller, locked by it) in
    parts; *state* is the sidecar that remembers which parts are done for *validator*."""

    def __init__(self, probe: Probe, fd: int, state: Path, validator: dict[str, Any], *,
                 headers: dict[str, str] | None = None, connections: int = DEFAULT_CONNECTIONS,
                 part_bytes: int | None = None, retries: int = 5, backoff_s: float = 0.5,
                 advance: Callable[[int], None] = lambda n: None, warn: Callable[[str], None] = lambda m: None) -> None:
        assert probe.ranges and probe.size is not None
        self.probe, self.fd, self.state = probe, fd, state
        self.size = probe.size
        self.headers = {"User-Agent": f"axon/{__version__}", "Accept-Encoding": "identity",
                        "Want-Content-Digest": WANT_CONTENT_DIGEST, **(headers or {})}
        if probe.etag and not probe.etag.startswith("W/"):
            self.headers["If-Range"] = probe.etag  # another object meanwhile: a 200, refused below
        self.connections = max(1, connections)
        self.part_bytes = part_bytes if part_bytes else default_part_bytes(self.size, self.connections)
        self.retries, self.backoff_s = retries, backoff_s
        self.validator = {**validator, "size": self.size, "etag": probe.etag, "part_bytes": self.part_bytes}
        self._report, self._warn = advance, warn
        self._lock = threading.Lock()
        self._part_done = threading.Condition(self._lock)
        self._progress_lock = threading.Lock()
        self._stop = threading.Event()
        self.done: set[int] = set()
        self.checked_parts = 0  # parts whose bytes matched the server's Content-Digest for them

    @property
    def parts(self) -> list[tuple[int, int]]:
        """(first byte, last byte) of every part."""
        return [(a, min(a + self.part_bytes, self.size) - 1) for a in range(0, self.size, self.part_bytes)]

    def fetch(self, consume: Callable[[bytes], None] | None = None) -> int:
        """Every part not done yet; returns the bytes fetched now. Raises SourceError when a part
        still fails after its retries (the parts that finished stay done for the next run).

        *consume* gets the whole file, in order, while the parts still arrive: a thread reads
        each part back (from the page cache it just went through) as soon as every part before it
        is done, so hashing overlaps the download instead of following it."""
        self.done = self._load_done()
        have = os.fstat(self.fd).st_size
        if have != self.size:  # the final size at once: parts are written where they belong
            self.done = set()  # and a file of another size holds no finished part of this one
            free = os.statvfs(self.state.parent)
            if self.size - have > free.f_bavail * free.f_frsize:
                raise DiskFullError(f"Not enough disk space for {self.probe.url!r}: the server says "
                                    f"{self.size} bytes, {free.f_bavail * free.f_frsize} are free.",
                                    hint="Free some space (axon cache gc) or point AXON_CACHE_DIR at a bigger disk.")
            os.ftruncate(self.fd, self.size)  # also cuts what a longer file held past the end
            with contextlib.suppress(OSError):  # the space reserved where the file system can (sparse if not)
                os.posix_fallocate(self.fd, 0, self.size)
        already = sum(b - a + 1 for i, (a, b) in enumerate(self.parts) if i in self.done)
        self._advance(already)
        todo = [i for i in range(len(self.parts)) if i not in self.done]
        fetched = 0
        in_order = _InOrder(self, consume) if consume is not None else None
        try:
            with concurrent.futures.ThreadPoolExecutor(min(self.connections, max(1, len(todo))),
                                                       thread_name_prefix="axon-part") as pool:
                futures = [pool.submit(self._part_with_retries, i) for i in todo]
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        fetched += fut.result()
                except BaseException:
                    self._stop.set()  # the other parts stop at their next chunk; what finished stays done
                    pool.shutdown(wait=True, cancel_futures=True)  # and the ones not started never start
                    raise
        except BaseException:
            if in_order is not None:
                in_order.abandon()  # the download's own error is the one to report
            raise
        if in_order is not None:
            in_order.finish()
        os.fsync(self.fd)
        if os.fstat(self.fd).st_size != self.size:
            raise SourceError(f"The partial download of {self.probe.url!r} changed size while it was written.",
                              hint="Run the same command again; only one axon should download it at a time.")
        return fetched

    def _advance(self, n: int) -> None:
        with self._progress_lock:  # one progress bar, fed by every part's thread
            self._report(n)

    # --- one part ----------------------------------------------------------------------------

    def _part_with_retries(self, index: int) -> int:
        attempt = 0
        while True:
            try:
                n = self._part(index)
                self._mark_done(index)
                return n
            except PartFailed as exc:
                attempt += 1
                if attempt > self.retries or self._stop.is_set():
                    raise SourceError(f"Download of {self.probe.url!r} failed: part {index + 1}/{len(self.parts)} "
                                      f"still failing after {self.retries} retries ({exc}).",
                                      hint="Check the network and run the same command again: the parts that "
                                      "arrived are kept.") from None
                delay = self.backoff_s * 2 ** (attempt - 1)
                self._warn(f"part {index + 1}/{len(self.parts)} interrupted ({exc}); retry {attempt}/{self.retries} "
                           f"in {delay:.1f}s")
                if self._stop.wait(delay):
                    raise SourceError("stopped") from None  # another part failed for good: that one is reported

    def _part(self, index: int) -> int:
        first, last = self.parts[index]
        if self._stop.is_set():
            raise PartFailed("stopped")
        req = urllib.request.Request(self.probe.url, headers={**self.headers, "Range": f"bytes={first}-{last}"})
        written = 0
        try:
            with _OPENER.open(req, timeout=TIMEOUT_S) as resp:
                self._check_answer(resp.status, resp.headers.get("Content-Range", ""), first, last)
                expected = parse_content_digest(resp.headers.get("Content-Digest"))
                hasher = hashlib.new(expected[0]) if expected is not None else None
                offset = first
                while offset <= last:
                    if self._stop.is_set():
                        raise PartFailed("stopped")
                    chunk = resp.read(min(CHUNK, last - offset + 1))
                    if not chunk:
                        raise PartFailed(f"short body: {offset - first} of {last - first + 1} bytes")
                    os.pwrite(self.fd, chunk, offset)
                    if hasher is not None:
                        hasher.update(chunk)
                    offset += len(chunk)
                    written += len(chunk)
                    self._advance(len(chunk))
                if resp.read(1):
                    raise PartFailed("the server sent more than the part")
                if expected is not None and hasher is not None and hasher.digest() != expected[1]:
                    raise PartFailed(f"bytes {first}-{last} do not match the {expected[0]} the server's "
                                     "Content-Digest gives for them")
                if expected is not None:
                    self.checked_parts += 1
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in RETRY_STATUSES:
                raise self._undo(written, PartFailed(f"HTTP {exc.code}")) from None
            raise SourceError(f"Download of {self.probe.url!r} failed: HTTP {exc.code} for bytes {first}-{last}.",
                              hint="Check the URL (and any credentials it needs).") from None
        except NETWORK_ERRORS as exc:
            raise self._undo(written, PartFailed(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")) from None
        except PartFailed as exc:
            raise self._undo(written, exc) from None
        os.fdatasync(self.fd)  # the part's bytes on disk before it is recorded as done
        return written

    def _undo(self, written: int, exc: PartFailed) -> PartFailed:
        """A failed part's bytes come again: the progress bar gives them back meanwhile."""
        self._advance(-written)
        return exc

    def _check_answer(self, status: int, content_range: str, first: int, last: int) -> None:
        if status != 206:  # If-Range: the object changed since the probe (or the server stopped honouring Range)
            raise SourceError(f"{self.probe.url!r} answered a Range request with HTTP {status}, not 206: it changed "
                              "while it was being downloaded, or stopped serving parts.",
                              hint="Run the same command again (it starts over if the file changed).")
        m = _CONTENT_RANGE.fullmatch(content_range.strip())
        if not m or (int(m.group(1)), int(m.group(2))) != (first, last) or m.group(3) not in ("*", str(self.size)):
            raise PartFailed(f"asked for bytes {first}-{last}, got {content_range or 'no Content-Range'}")

    # --- which parts are done ------------------------------------------------------------------

    def _load_done(self) -> set[int]:
        try:
            data = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return set()
        if not isinstance(data, dict) or data.get("validator") != self.validator:
            return set()  # another object, or another cut: nothing done counts
        done = data.get("done")
        return {i for i in done if isinstance(i, int) and 0 <= i < len(self.parts)} if isinstance(done, list) else set()

    def _mark_done(self, index: int) -> None:
        with self._lock:
            self.done.add(index)
            tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"validator": self.validator, "done": sorted(self.done)}))
            os.replace(tmp, self.state)
            self._part_done.notify_all()



class _InOrder:
    """The thread that hands a RangedFile's bytes to *consume* in file order, part by part, as
    soon as each part and all before it are done."""

    def __init__(self, ranged: RangedFile, consume: Callable[[bytes], None]) -> None:
        self.ranged, self.consume = ranged, consume
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="axon-hash-in-order", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        r = self.ranged
        try:
            for index, (first, last) in enumerate(r.parts):
                with r._part_done:
                    while index not in r.done and not r._stop.is_set():
                        r._part_done.wait()
                    if index not in r.done:
                        return  # the download stopped: nothing more comes in order
                offset = first
                while offset <= last:
                    chunk = os.pread(r.fd, min(CHUNK * 4, last - offset + 1), offset)
                    if not chunk:
                        raise OSError(errno.EIO, "the partial file is shorter than its finished parts")
                    self.consume(chunk)
                    offset += len(chunk)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        """Wait for the last byte; re-raise what went wrong in the thread."""
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """The download failed: stop waiting for parts that will not come."""
        r = self.ranged
        with r._part_done:
            r._stop.set()
            r._part_done.notify_all()
        self.thread.join()


def fetch_ranged(found: Probe, partial: PartialDownload, validator: dict[str, Any], label: str, reporter: Reporter,
                 *, headers: dict[str, str] | None = None, connections: int = DEFAULT_CONNECTIONS,
                 part_bytes: int | None = None, retries: int = 5, backoff_s: float = 0.5,
                 git_blob_size: int | None = None) -> tuple[FileDigest, HashingWriter]:
    """*found*'s object into *partial* in parts, hashed in order while they arrive: what a source
    does with a large file. *validator* says which object this is (with where the parts come
    from, less a signed URL's query, which changes every run); returns its digest and the writer
    (a git blob id's sha1, when asked for with *git_blob_size*)."""
    assert found.size is not None
    validator = {**validator, "parts_from": found.url.split("?", 1)[0], "size": found.size, "etag": found.etag}
    with partial.open(validator) as (f, _):
        ranged = RangedFile(found, f.fileno(), partial.parts_state, validator, headers=headers,
                            connections=connections, part_bytes=part_bytes, retries=retries, backoff_s=backoff_s,
                            advance=reporter.advance, warn=reporter.warn)
        reporter.stage(f"downloading {label} in {len(ranged.parts)} parts over "
                       f"{min(connections, len(ranged.parts))} connections")
        reporter.start(label, found.size)
        writer = HashingWriter(f, git_blob_size=git_blob_size)
        try:
            ranged.fetch(consume=writer.absorb)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(exc, partial.dir) from exc
            raise
        finally:
            reporter.finish()
        return writer.digest(), writer
