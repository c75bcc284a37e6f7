"""Where things live under a store root (dev cache or production repository).

``<root>/<ns>/<name…>/<version>/manifest.yaml`` plus the model files; everything axon keeps for
itself (staging, locks, partial downloads, history, audit log) lives under ``<root>/.axon/``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from axon.errors import AxonError, BusyError
from axon.store.blobs import BlobStore
from axon.store.fastio import is_within
from axon.store.nofollow import remove_tree
from axon.store.spec import ModelSpec

__all__ = ["MANIFEST_NAME", "StagingName", "StoreLayout", "VersionEntry", "parse_staging_name", "pid_alive",
           "staging_prefix", "version_key"]

MANIFEST_NAME = "manifest.yaml"
INTERNAL_DIR = ".axon"

# <key>.<pid>.[x<digest>.]<random>: the pid says whether its writer is alive; "x<digest>" marks a
# staging directory that may hold, after an interrupted --force, the replaced copy with that digest.
_STAGING_RE = re.compile(r"^(?P<key>.+)\.(?P<pid>\d+)\.(?:x(?P<replaces>[0-9a-f]{8,64})\.)?(?P<rand>[A-Za-z0-9_]+)$")


def contains(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether *path* is inside *root*, or would be once created: its nearest existing ancestor
    is within *root* (real paths, on component boundaries: ``fastio.is_within``). The caller has
    refused ``..`` segments in the part that does not exist yet."""
    probe = Path(path)
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return is_within(root, probe)


def version_key(spec: ModelSpec) -> str:
    """One flat name per version (``ns~name…@version``, e.g. ``hf~org~repo@main``): lock files,
    staging and history. Injective: ``~`` and ``@`` never occur inside a spec's parts (``--`` can,
    so ``a/b--c@1`` and ``a--b/c@1`` would share a history)."""
    *path, version = spec.parts
    return "~".join(path) + "@" + version


def staging_prefix(spec: ModelSpec, *, replaces: str | None = None) -> str:
    """mkdtemp prefix of a staging directory for *spec*, written by this process."""
    return f"{version_key(spec)}.{os.getpid()}." + (f"x{replaces}." if replaces else "")


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists (one of another user's counts: kill says EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class StagingName:
    pid: int | None
    replaces: str | None


def parse_staging_name(name: str) -> StagingName:
    m = _STAGING_RE.match(name)
    if m is None:
        return StagingName(None, None)
    return StagingName(int(m["pid"]), m["replaces"])


@dataclass(frozen=True, slots=True)
class VersionEntry:
    spec: ModelSpec
    path: Path
    has_manifest: bool


class StoreLayout:
    """Paths of one store; creates nothing until asked."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def internal(self) -> Path:
        return self.root / INTERNAL_DIR

    @property
    def staging(self) -> Path:
        return self.internal / "staging"

    @property
    def downloads(self) -> Path:
        return self.internal / "downloads"

    @property
    def trash(self) -> Path:
        return self.internal / "trash"

    @property
    def locks(self) -> Path:
        return self.internal / "locks"

    @property
    def blobs(self) -> BlobStore:
        """The content-addressed store of the dev cache (``.axon/blobs``)."""
        return BlobStore(self.internal)

    def version_dir(self, spec: ModelSpec) -> Path:
        return self.root / spec.relpath

    def manifest_path(self, spec: ModelSpec) -> Path:
        return self.version_dir(spec) / MANIFEST_NAME

    def new_staging(self, spec: ModelSpec, *, replaces: str | None = None) -> Path:
        """A fresh staging directory for *spec* (mode 0700), named so that a later run can tell
        whether its writer is still alive (and, with *replaces*, which copy it may hold)."""
        return Path(tempfile.mkdtemp(prefix=staging_prefix(spec, replaces=replaces), dir=self.staging))

    def cleanup_stale_staging(self, *, recover: Callable[[Path, str], bool] | None = None) -> list[Path]:
        """Remove staging directories whose creating process is gone (killed mid-install).

        A directory named as possibly holding a replaced copy (``x<digest>``, an interrupted
        ``publish --force``) is offered to *recover* first, which returns True when it kept it.
        """
        removed: list[Path] = []
        if not self.staging.is_dir():
            return removed
        for entry in self.staging.iterdir():
            name = parse_staging_name(entry.name)
            if name.pid is not None and (name.pid == os.getpid() or pid_alive(name.pid)):
                continue
            try:
                if name.replaces and recover is not None and recover(entry, name.replaces):
                    continue
                remove_tree(entry)
            except OSError:
                continue  # another user's leftover we may not delete: theirs (or root's) to clean
            removed.append(entry)
        return removed

    def ensure_internal(self) -> None:
        for d in (self.staging, self.downloads, self.trash, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, spec: ModelSpec, *, wait: bool = False) -> Iterator[None]:
        """Exclusive per-version lock (flock, released by the kernel if the process dies)."""
        self.locks.mkdir(parents=True, exist_ok=True)
        path = self.locks / (version_key(spec) + ".lock")
        while True:
            fd = self.open_lock_file(path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise BusyError(f"Model {str(spec)!r} is busy: another axon process is working on it.",
                                    hint="Wait for it to finish, then run the command again.") from None
                try:
                    same = os.lstat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:  # else its owner removed or replaced the file while we waited: lock the new one
                    yield
                    return
            finally:
                os.close(fd)

    @staticmethod
    def open_lock_file(path: Path) -> int:
        # Read-only is enough for flock, and lets other members of a shared repository lock a
        # file someone else created; 0660: nobody outside the group can hold it. Never through a
        # symlink (a planted one would make a root process create or open a file elsewhere),
        # never a FIFO (an open would block).
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o660)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise AxonError(f"Lock file {str(path)!r} is a symlink; refusing to follow it.",
                            hint=f"Someone planted it: remove it (rm {path}) and check who did.") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AxonError(f"Lock file {str(path)!r} is not a regular file; refusing it.",
                            hint=f"Remove it (rm {path}) and run the command again.")
        return fd

    def iter_versions(self) -> Iterator[VersionEntry]:
        """Every version directory, complete or not, in sorted order.

        ``<ns>/<name>/<version>`` is a version when it holds a manifest or only files; otherwise
        ``<ns>/<org>/<repo>/<version>``.
        """
        if not self.root.is_dir():
            return
        for ns in _subdirs(self.root):
            for name in _subdirs(ns):
                for third in _subdirs(name):
                    if (third / MANIFEST_NAME).exists() or not any(_subdirs(third)):
                        yield self._entry(ns.name, name.name, third)
                    else:
                        for fourth in _subdirs(third):
                            yield self._entry(ns.name, f"{name.name}/{third.name}", fourth)

    def _entry(self, ns: str, name: str, path: Path) -> VersionEntry:
        spec = ModelSpec(ns, name, path.name)
        return VersionEntry(spec, path, (path / MANIFEST_NAME).is_file())


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()
                      and not p.name.startswith("."))
    except OSError:
        return []
