"""The dev cache's content-addressed blob store: every file kept once, by its sha256.

``<cache>/.axon/blobs/sha256/<aa>/<sha256>``
    the bytes, read-only (0444);
``<cache>/.axon/blobs/sha256/<aa>/<sha256>.json``
    ``{"size", "xxh3_128"}``, written before the blob itself, so that a file reused from the store
    gets its whole manifest entry without being read again;
``<cache>/.axon/blobs/git-sha1/<aa>/<sha1>``
    the sha256 of the blob whose git blob id this is (the Hub names its small files that way).

A version directory stays a plain directory of files that tools and servers read as before: each
file is a reflink of its blob where the file system has them (its own inode, sharing the blocks)
and a read-only hard link otherwise (the same inode). Removing a version removes its names only;
a blob goes when no installed version lists it (:meth:`BlobStore.collect`, which ``cache remove``
and ``cache gc`` call).

A blob is trusted as the bytes its name says: it entered the store only after the download that
made it was checked (the Hub's sha256, ``--sha256``, or hashed as it was written), it is
read-only, and ``axon verify`` re-hashes what a version holds. Installs hold the store's lock
shared; collecting garbage takes it exclusively and waits for no one (a busy store is left for
the next run).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from axon.store.atomic import atomic_write_bytes, fsync_dir
from axon.store.fastio import FileDigest

__all__ = ["BlobStore", "CollectReport"]

FICLONE = 0x40049409  # ioctl(dest_fd, FICLONE, src_fd): share the blocks (btrfs, XFS, bcachefs, ...)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
BLOB_MODE = 0o444
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM)


@dataclass(slots=True)
class CollectReport:
    removed: list[str]
    bytes_freed: int
    busy: bool = False  # an install held the store: nothing was collected


class BlobStore:
    """Blobs under ``<cache>/.axon/blobs``; creates nothing until something is stored."""

    def __init__(self, internal: Path) -> None:
        self.root = internal / "blobs"
        self._reflinks: bool | None = None  # learnt on the first placement

    # --- names -----------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def _meta_path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / f"{sha256}.json"

    def _git_path(self, sha1: str) -> Path:
        return self.root / "git-sha1" / sha1[:2] / sha1

    # --- lookups ---------------------------------------------------------------------------

    def find(self, sha256: str | None, size: int | None = None) -> FileDigest | None:
        """The digest of blob *sha256* when the store has it (of *size*, when given)."""
        if not sha256 or not _HEX64.match(sha256.lower()):
            return None
        sha256 = sha256.lower()
        try:
            st = os.lstat(self.path(sha256))
            meta = json.loads(self._meta_path(sha256).read_text())
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or not isinstance(meta, dict):
            return None
        xxh3, recorded = meta.get("xxh3_128"), meta.get("size")
        if recorded != st.st_size or not isinstance(xxh3, str) or not _HEX32.match(xxh3):
            return None
        if size is not None and size != st.st_size:
            return None
        return FileDigest(st.st_size, sha256, xxh3)

    def find_git(self, sha1: str | None, size: int | None = None) -> FileDigest | None:
        """The blob whose git blob id is *sha1* (a Hub file kept in git, not LFS), if stored."""
        if not sha1 or not _HEX40.match(sha1.lower()):
            return None
        try:
            sha256 = self._git_path(sha1.lower()).read_text().strip()
        except (OSError, ValueError):  # unreadable, or not text
            return None
        return self.find(sha256, size)

    # --- placing and adopting ----------------------------------------------------------------

    def place(self, digest: FileDigest, dest: Path) -> str:
        """Make *dest* (which must not exist) hold blob *digest*: ``reflink`` or ``hardlink``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        blob = self.path(digest.sha256)
        if self._reflinks is not False and self._clone(blob, dest):
            return "reflink"
        os.link(blob, dest)
        return "hardlink"

    def _clone(self, blob: Path, dest: Path) -> bool:
        src = os.open(blob, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(out, FICLONE, src)
                os.fchmod(out, BLOB_MODE)
            except OSError as exc:
                os.close(out)
                os.unlink(dest)
                if exc.errno not in _NO_REFLINK:
                    raise
                self._reflinks = False
                return False
            os.close(out)
        finally:
            os.close(src)
        self._reflinks = True
        return True

    def adopt(self, path: Path, digest: FileDigest, *, git_sha1: str | None = None) -> bool:
        """Take the freshly checked file at *path* into the store, leaving at *path* its placement;
        True when the store already had those bytes (the file is now shared, not a new blob)."""
        blob = self.path(digest.sha256)
        stored = self.find(digest.sha256, digest.size)
        if stored is not None:
            if stored.xxh3_128 != digest.xxh3_128:
                return False  # the two digests disagree about the same bytes: keep the version's own copy
            if not _same_file(path, blob):
                self._place_over(stored, path)
            self._index_git(git_sha1, digest.sha256)
            return True
        os.chmod(path, BLOB_MODE, follow_symlinks=False)
        blob.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._meta_path(digest.sha256),
                      json.dumps({"size": digest.size, "xxh3_128": digest.xxh3_128}).encode())
        try:
            os.link(path, blob, follow_symlinks=False)
        except FileExistsError:  # another install stored the same bytes a moment ago
            return self.adopt(path, digest, git_sha1=git_sha1)
        if self._reflinks is not False:
            self._place_over(digest, path)  # the version gets its own inode where blocks can be shared
        self._index_git(git_sha1, digest.sha256)
        return False

    def _place_over(self, digest: FileDigest, path: Path) -> None:
        """Replace the file at *path* by a placement of blob *digest*, in one rename."""
        tmp = path.with_name(f".{path.name}.axon-blob")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self.place(digest, tmp)
        os.replace(tmp, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # rename does nothing when both names are links of one file already

    def _index_git(self, sha1: str | None, sha256: str) -> None:
        if sha1 and _HEX40.match(sha1.lower()):
            p = self._git_path(sha1.lower())
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(p, sha256.encode())

    def sync(self) -> None:
        """fsync the store's directories, so that links made since are durable."""
        for top in ("sha256", "git-sha1"):
            base = self.root / top
            if not base.is_dir():
                continue
            for d in [base, *(p for p in base.iterdir() if p.is_dir())]:
                fsync_dir(d)

    # --- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) by an install from its first placement until its version is in place."""
        fd = self._lock_fd()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _lock_fd(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.open(self.root / ".lock", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    # --- sizes and garbage -------------------------------------------------------------------

    def blobs(self) -> Iterator[tuple[str, os.stat_result]]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for shard in sorted(base.iterdir()):
            if not shard.is_dir():
                continue
            for p in sorted(shard.iterdir()):
                if _HEX64.match(p.name):
                    with contextlib.suppress(OSError):
                        yield p.name, os.lstat(p)

    def collect(self, used: Iterable[str], *, only: Iterable[str] | None = None,
                dry_run: bool = False) -> CollectReport:
        """Remove every blob not in *used* (of those in *only*, when given), with its record and
        git index entries; temporary leftovers go too. Skips everything while an install runs."""
        report = CollectReport([], 0)
        if not self.root.is_dir():
            return report
        keep = set(used)
        fd = self._lock_fd()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.busy = True
                return report
            candidates = set(only) if only is not None else None
            for sha, st in list(self.blobs()):
                if sha in keep or (candidates is not None and sha not in candidates):
                    continue
                report.removed.append(str(self.path(sha)))
                report.bytes_freed += st.st_blocks * 512 if st.st_nlink == 1 else 0
                if not dry_run:
                    self.path(sha).unlink(missing_ok=True)
                    self._meta_path(sha).unlink(missing_ok=True)
            if not dry_run and candidates is None:
                self._sweep()
        finally:
            os.close(fd)
        return report

    def _sweep(self) -> None:
        """Records without a blob, git index entries of vanished blobs, temporaries of a killed run."""
        base = self.root / "sha256"
        for shard in base.iterdir() if base.is_dir() else ():
            for p in shard.iterdir() if shard.is_dir() else ():
                stem = p.name.removesuffix(".json")
                if (p.name.endswith(".json") and not (shard / stem).exists()) or p.name.startswith("."):
                    p.unlink(missing_ok=True)
        git = self.root / "git-sha1"
        for shard in git.iterdir() if git.is_dir() else ():
            for p in shard.iterdir() if shard.is_dir() else ():
                try:
                    target = p.read_text().strip()
                except ValueError:
                    target = ""
                except OSError:
                    continue
                if p.name.startswith(".") or not _HEX64.match(target) or not self.path(target).exists():
                    p.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
