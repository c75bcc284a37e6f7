"""File-system steps that never follow a symlink, for trees someone else may control.

A root ``axon publish`` reads a dev cache that belongs to an unprivileged user, and root's
rollback, purge and clean-up walk directories that group members created. Path-based calls
(``os.walk`` + ``chmod``/``rmtree``/``open``) follow a symlink swapped in between the check and
the use. Here every step goes through a directory file descriptor: ``openat(O_NOFOLLOW)`` /
``openat2(RESOLVE_NO_SYMLINKS)``, ``fchmod``/``fchown`` on what was opened, ``unlinkat`` on
names inside an opened directory. What was checked is what is changed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from axon.store.fastio import open_beneath

__all__ = ["fd_path", "open_dir", "read_regular", "remove_tree", "set_tree_modes", "tree_entries"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fd_path(fd: int) -> str:
    """A path that reopens exactly the file behind *fd* (the kernel's magic link, not a name)."""
    return f"/proc/self/fd/{fd}"


@contextmanager
def open_dir(path: str | os.PathLike[str], rel: str | None = None) -> Iterator[int]:
    """An fd of directory *path* (itself not a symlink), or of *rel* beneath it, no symlink on the way."""
    if rel is None:
        fd = os.open(path, _DIR_FLAGS)
    else:
        fd = open_beneath(path, rel, os.O_RDONLY | os.O_DIRECTORY, follow_symlinks=False)
    try:
        yield fd
    finally:
        os.close(fd)


def read_regular(dirfd: int, rel: str, *, limit: int = 64 << 20, close_dir: bool = False
                 ) -> tuple[bytes, os.stat_result]:
    """The bytes of regular file *rel* beneath *dirfd* (no symlinks), with its stat; *close_dir*
    closes *dirfd* once the file is open."""
    try:
        fd = open_beneath(dirfd, rel, os.O_RDONLY | os.O_NONBLOCK, follow_symlinks=False)
    finally:
        if close_dir:
            os.close(dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", rel)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", rel)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _writable(fd: int) -> None:
    """Give the owner rwx on an opened directory when it lacks them (published trees are 2555)."""
    mode = os.fstat(fd).st_mode
    if mode & 0o700 != 0o700 and os.geteuid() != 0:
        os.fchmod(fd, (mode & 0o7777) | 0o700)


def _remove_children(fd: int) -> None:
    _writable(fd)
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                os.unlink(name, dir_fd=fd)  # swapped for a symlink or file since the listing
                continue
            try:
                _remove_children(child)
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove *path* and everything below it without following any symlink.

    A symlink (at the top or anywhere below) is removed itself, never what it points to;
    read-only directories of our own are made writable first through their fd.
    """
    path = Path(path)
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            st = os.lstat(path.name, dir_fd=parent)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path.name, dir_fd=parent)
            return
        fd = os.open(path.name, _DIR_FLAGS, dir_fd=parent)
        try:
            _remove_children(fd)
        finally:
            os.close(fd)
        os.rmdir(path.name, dir_fd=parent)
    finally:
        os.close(parent)


def tree_entries(fd: int, prefix: str = "") -> Iterator[tuple[str, int, os.stat_result]]:
    """(relative path, open fd, stat) of every entry below directory *fd*, depth first, children
    before their directory; each fd is closed once the caller moves on. Refuses symlinks and
    special files (a published tree holds regular files and directories only)."""
    with os.scandir(fd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        rel = f"{prefix}{name}"
        try:
            child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "is a symlink", rel) from None
            raise OSError(exc.errno, exc.strerror, rel) from None
        try:
            st = os.fstat(child)
            if stat.S_ISDIR(st.st_mode):
                yield from tree_entries(child, rel + "/")
            elif not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "is not a regular file or directory", rel)
            yield rel, child, st
        finally:
            os.close(child)


def set_tree_modes(fd: int, *, file_mode: int, dir_mode: int, gid: int | None, uid: int | None = None) -> None:
    """chown (when *uid*/*gid* are given) and chmod every entry below directory *fd* through its own
    fd; the directory itself is left to the caller. A file with other hard links is refused
    unless it needs no change (nothing done here may reach a file elsewhere)."""
    for rel, child, st in tree_entries(fd):
        if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
            if stat.S_IMODE(st.st_mode) == file_mode and (uid is None or st.st_uid == uid) \
                    and (gid is None or st.st_gid == gid):
                continue  # a published file shared with another version, already as it should be
            # A hard link would make this chown/chmod land on a file elsewhere too.
            raise OSError(errno.EMLINK, "has other hard links; refusing to change its owner or mode", rel)
        if (uid is not None and st.st_uid != uid) or (gid is not None and st.st_gid != gid):
            os.fchown(child, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(child, dir_mode if stat.S_ISDIR(st.st_mode) else file_mode)
