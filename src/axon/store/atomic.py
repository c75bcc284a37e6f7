"""Durable, atomic file-system writes: nothing half-written is ever visible.

Every write a user can observe follows one path: a temp file beside the target (unique per
process), fsync the file, ``os.replace``, fsync the directory, cleanup in ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from axon.errors import DiskFullError
from axon.store.fastio import rename_exchange
from axon.store.nofollow import remove_tree  # one remover for every tree: fd-based, never follows a symlink

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_tree", "move_into_place", "remove_tree"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every regular file and directory below *root*, then *root* itself."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = ""
        fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"Disk full while writing {str(target)!r}.",
                                hint="Free some space and run the command again.") from exc
        raise
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_text(target: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(target, text.encode("utf-8"), mode=mode)


def move_into_place(new: str | os.PathLike[str], target: str | os.PathLike[str], *, replace: bool) -> None:
    """Put the complete directory *new* at *target* in one atomic step, then fsync the parent.

    With *replace*, *target* exists and the two are swapped (``renameat2(RENAME_EXCHANGE)``):
    readers see the old copy or the new one, never neither, and *new* then holds the old copy
    for the caller to keep or delete. Otherwise a plain rename, which fails if *target* exists."""
    if replace:
        rename_exchange(new, target)
    else:
        os.rename(new, target)
    fsync_dir(os.path.dirname(os.path.abspath(target)))
