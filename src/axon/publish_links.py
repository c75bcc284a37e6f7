"""Files a new version shares with the published versions of its model: linked, not copied.

A published file is read-only and never changes in place (a version is replaced whole, by a
rename), so a new version whose file has the same size, sha256 and xxh3-128 as a file of another
published version of the same model gets a hard link to it instead of a copy. Only what the
publisher could not change anyway is linked: a version directory owned by the caller (root's,
when root publishes), its manifest read without following a symlink, and a regular file of that
directory owned by the caller with the published mode and the repository's group, opened beneath
the directory and linked through its descriptor (``/proc/self/fd``), so that nothing renamed in
between is linked instead. Unpublishing or rolling back one version moves or removes its names
only; the other version's names keep the file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from axon.errors import AxonError
from axon.store.fastio import open_beneath
from axon.store.layout import MANIFEST_NAME
from axon.store.manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest, parse_manifest
from axon.store.modes import FILE_MODE
from axon.store.nofollow import fd_path, read_regular
from axon.store.spec import ModelSpec

__all__ = ["Linkable", "find_linkable", "unshare_owned"]


@dataclass(slots=True)
class Linkable:
    """Open descriptors of published files, by the package path of the new version they serve."""

    fds: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    @property
    def paths(self) -> set[str]:
        return set(self.fds)

    def link_into(self, staging: Path, entry: FileEntry) -> None:
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # a dir fd makes CPython call linkat(AT_SYMLINK_FOLLOW): the magic link gives the open file itself
            # (plain link() would try to link the /proc entry)
            os.link(fd_path(self.fds[entry.path]), dest.name, dst_dir_fd=dfd, follow_symlinks=True)
        finally:
            os.close(dfd)


def _key(f: FileEntry) -> tuple[int, str, str]:
    return f.size, f.sha256, f.xxh3_128


@contextlib.contextmanager
def find_linkable(target: Path, spec: ModelSpec, manifest: Manifest, gid: int | None) -> Iterator[Linkable]:
    """Which files of *manifest* (to be published at *target*) another published version of the
    same model already holds, as open descriptors; closed on exit."""
    found = Linkable()
    wanted: dict[tuple[int, str, str], list[str]] = {}
    for f in manifest.files:
        if f.size > 0:
            wanted.setdefault(_key(f), []).append(f.path)
    uid = os.geteuid()
    try:
        if wanted:
            _scan(target, spec, uid, gid, wanted, found)
        yield found
    finally:
        found.close()


def _scan(target: Path, spec: ModelSpec, uid: int, gid: int | None,
          wanted: dict[tuple[int, str, str], list[str]], found: Linkable) -> None:
    try:
        parent = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # the model's first version: nothing to share
    try:
        names = sorted(n for n in os.listdir(parent) if not n.startswith("."))
        # the version being replaced first (a --force of a small change), then the others
        names.sort(key=lambda n: n != target.name)
        for name in names:
            if not any(p not in found.fds for paths in wanted.values() for p in paths):
                return
            _scan_version(parent, name, spec, uid, gid, wanted, found)
    finally:
        os.close(parent)


def _scan_version(parent: int, name: str, spec: ModelSpec, uid: int, gid: int | None,
                  wanted: dict[tuple[int, str, str], list[str]], found: Linkable) -> None:
    try:
        st = os.lstat(name, dir_fd=parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            return
        vfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return
    try:
        try:
            data, mst = read_regular(vfd, MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
            other = parse_manifest(data, f"{name}/{MANIFEST_NAME}")
        except (OSError, AxonError):
            return
        if mst.st_uid != uid or (other.namespace, other.name) != (spec.namespace, spec.name):
            return
        for f in other.files:
            for path in wanted.get(_key(f), []):
                if path in found.fds:
                    continue
                fd = _open_published(vfd, f, uid, gid)
                if fd is None:
                    break
                found.fds[path] = fd
    finally:
        os.close(vfd)


def _open_published(vfd: int, f: FileEntry, uid: int, gid: int | None) -> int | None:
    """*f* of the version open at *vfd*, if it is a published file the caller may share."""
    try:
        fd = open_beneath(vfd, f.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, follow_symlinks=False)
    except OSError:
        return None
    st = os.fstat(fd)
    if (not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size != f.size
            or stat.S_IMODE(st.st_mode) != FILE_MODE or (gid is not None and st.st_gid != gid)):
        os.close(fd)
        return None
    return fd


def unshare_owned(version_dir: Path, owner: int) -> int:
    """Give every file of *version_dir* owned by *owner* and linked elsewhere (a file its publisher
    shares with another of their versions) its own copy, so that root can take this copy over
    without changing the other version's file. Files with other links owned by anyone else are
    left for the caller's mode change to refuse. Returns the bytes copied."""
    fd = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _unshare(fd, owner)
    finally:
        os.close(fd)


def _unshare(dfd: int, owner: int) -> int:
    copied = 0
    for name in sorted(os.listdir(dfd)):
        st = os.lstat(name, dir_fd=dfd)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                copied += _unshare(sub, owner)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and st.st_uid == owner:
            copied += _own_copy(dfd, name, st)
    return copied


def _own_copy(dfd: int, name: str, st: os.stat_result) -> int:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    tmp = f".{name}.axon-own"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dfd)
    dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        if (os.fstat(src).st_dev, os.fstat(src).st_ino) != (st.st_dev, st.st_ino):
            raise OSError(f"{name!r} changed while it was being copied")
        done = 0
        while done < st.st_size:
            n = os.copy_file_range(src, dst, st.st_size - done)
            if n == 0:
                break
            done += n
        os.fsync(dst)
    except BaseException:
        os.close(dst)
        os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(src)
    os.close(dst)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    os.fsync(dfd)
    return done
