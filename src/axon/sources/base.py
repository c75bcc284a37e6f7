"""What every source produces, plus the hashing writer and resumable partial files they share."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import xxhash

from axon.errors import DiskFullError, IntegrityError
from axon.reporting import Reporter
from axon.store.fastio import FileDigest

__all__ = ["AUX_FILES", "FetchResult", "HashingWriter", "PartialDownload", "Source", "disk_full"]

READ_CHUNK = 1 << 20

# A package's files beside its graph, fetched when the repository has them: configuration, tokenizer and
# sentence-transformers module files.
AUX_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
    "generation_config.json", "preprocessor_config.json",
)


@dataclass(slots=True)
class FetchResult:
    """Files now present in the staging directory, with their digests, and source metadata."""

    source: dict[str, Any]
    digests: dict[str, FileDigest] = field(default_factory=dict)
    entrypoint: str | None = None
    description: str | None = None
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a bundled manifest's pre/postprocessing
    git_ids: dict[str, str] = field(default_factory=dict)  # path -> git blob id (Hub files kept in git)
    reused: dict[str, FileDigest] = field(default_factory=dict)  # placed from the blob store, not fetched


class Source(Protocol):
    kind: str

    def describe(self) -> str:
        """A short human description (repo@rev, URL, path)."""

    def fetch(self, staging: Path, reporter: Reporter) -> FetchResult:
        """Place every package file under *staging*, hashing as they are written."""


def disk_full(exc: OSError, where: Path) -> DiskFullError:
    return DiskFullError(
        f"Disk full while writing under {str(where)!r} ({os.strerror(exc.errno or errno.ENOSPC)}).",
        hint="Free some space (axon cache gc removes leftovers) and run the command again; "
        "partial downloads are kept and resume.",
    )


class HashingWriter:
    """A file object that hashes what passes through it (sha256, xxh3-128, optional git-blob sha1).

    Supports the seek-back-and-truncate a downloader does when a server ignores a Range request.
    """

    def __init__(self, f: BinaryIO, *, git_blob_size: int | None = None) -> None:
        self._f = f
        self._git_blob_size = git_blob_size
        self._reset()

    def _reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.xxh3 = xxhash.xxh3_128()
        self.sha1: Any = None
        if self._git_blob_size is not None:
            self.sha1 = hashlib.sha1(usedforsecurity=False)
            self.sha1.update(b"blob %d\0" % self._git_blob_size)
        self.size = 0

    def absorb_existing(self) -> int:
        """Hash what the underlying file already holds (a resumed partial download)."""
        self._f.seek(0)
        while chunk := self._f.read(READ_CHUNK):
            self._update(chunk)
        return self.size

    def absorb(self, data: bytes | memoryview) -> None:
        """Hash *data* as the next bytes of the file without writing them (they are already
        there: a ranged download's parts, read back in order)."""
        self._update(data)

    def _update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.xxh3.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)
        self.size += len(data)

    def write(self, data: bytes | memoryview) -> int:
        n = self._f.write(data)
        self._update(data)
        return n if n is not None else len(data)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._f.seek(offset, whence)
        if pos != self.size:
            # Only ever used to restart from zero (server ignored Range): re-hash what is kept.
            self._f.truncate(pos)
            keep = pos
            self._reset()
            if keep:
                self._f.seek(0)
                remaining = keep
                while remaining:
                    chunk = self._f.read(min(READ_CHUNK, remaining))
                    if not chunk:
                        break
                    self._update(chunk)
                    remaining -= len(chunk)
        return pos

    def truncate(self, size: int | None = None) -> int:
        return self._f.truncate(size)

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self.sha256.hexdigest(), self.xxh3.hexdigest())


class PartialDownload:
    """``<store>/.axon/downloads/<key>.part`` with a JSON sidecar, locked while in use.

    A download killed mid-way leaves the part behind; the next attempt with the same key and
    validator (ETag/size) resumes from it with an HTTP Range request.
    """

    def __init__(self, downloads_dir: Path, key: str) -> None:
        self.dir = downloads_dir
        self.part = downloads_dir / f"{key}.part"
        self.meta_path = downloads_dir / f"{key}.json"
        # which parts of a ranged download are done: only ever about this very part file, so it
        # goes wherever the part goes (never trusted for a part created afresh)
        self.parts_state = downloads_dir / f"{key}.parts.json"

    @contextlib.contextmanager
    def open(self, validator: dict[str, Any]) -> Iterator[tuple[BinaryIO, int]]:
        """Yield (file positioned at its end, bytes already there) under an exclusive lock."""
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self._read_meta()
        if old != validator and self.part.exists():
            self.part.unlink()  # different content upstream: never splice two versions
        if not self.part.exists():
            self.parts_state.unlink(missing_ok=True)  # a fresh part has no finished parts
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        f = os.fdopen(fd, "r+b", buffering=0)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from axon.errors import BusyError

                raise BusyError(f"Download {self.part.name!r} is in use by another axon process.",
                                hint="Wait for it to finish, then run the command again.") from None
            self.meta_path.write_text(json.dumps(validator))
            have = f.seek(0, os.SEEK_END)
            yield f, have
        finally:
            f.close()

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def finish_into(self, target: Path) -> None:
        """fsync the part and move it into the staging directory."""
        fd = os.open(self.part, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part, target)
        self.discard_meta()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()
        self.discard_meta()

    def discard_meta(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.meta_path.unlink()
        self.parts_state.unlink(missing_ok=True)


def check_digest(name: str, what: str, expected: str, actual: str, spec_hint: str) -> None:
    if expected.lower() != actual.lower():
        raise IntegrityError(
            f"Downloaded file {name!r} failed its {what} check: expected {expected}, got {actual}.",
            path=name, expected=expected, actual=actual,
            hint=f"Nothing was installed. The source served corrupted data; try again later ({spec_hint}).",
        )
