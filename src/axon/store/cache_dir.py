"""A serving host's cache directory: made once, recognised after, never confused with anything else.

The cache is where MLOS Core fetches versions of an s3:// repository to, and where it *evicts*
from: every version directory in it that no registration uses is deleted. So a directory is
only used as one when it is new or empty (it is then marked, ``.axon/cache.yaml``), holds
nothing but axon's ``.axon``, or already carries that mark: ``--cache-dir /var/lib/mlos/models``
(a production repository), a home directory or a dev cache is refused before anything in it is
touched.

Made by root, the cache is ``root:mlos`` (the group when it exists), mode ``2750``: serving
processes in the group read it, nobody but root writes it; made by another user, it is theirs.
"""

from __future__ import annotations

import contextlib
import grp
import os
from datetime import UTC, datetime
from pathlib import Path

from axon.errors import NotACacheDirError
from axon.store.atomic import atomic_write_text
from axon.store.layout import INTERNAL_DIR
from axon.store.nofollow import read_regular

__all__ = ["CACHE_GROUP", "CACHE_MARKER", "CACHE_ROOT_MODE", "DEFAULT_CACHE_DIR", "open_cache_dir"]

DEFAULT_CACHE_DIR = Path("/var/cache/mlos/models")

CACHE_MARKER = f"{INTERNAL_DIR}/cache.yaml"
CACHE_GROUP = "mlos"
CACHE_ROOT_MODE = 0o2750  # root writes; the group reads (setgid: what root creates inside gets the group)
_REPOSITORY_RECORD = f"{INTERNAL_DIR}/repository.yaml"
_MARK = b"kind: mlos-core-cache\n"


def _refuse(root: Path, why: str) -> NotACacheDirError:
    return NotACacheDirError(f"{str(root)!r} is not an MLOS Core cache directory ({why}); refusing to fetch into it or "
                      "evict from it.",
                      hint="Give --cache-dir a new or empty directory (default /var/cache/mlos/models).")


def open_cache_dir(root: Path, *, create: bool = True, group: str | None = CACHE_GROUP) -> bool:
    """Check that *root* is a cache directory, making (and marking) it one when it is new or empty
    and *create* is true. Returns whether it is one now (False only for a missing one, not created).

    Raises:
        NotACacheDirError: *root* holds something else (a production repository, any other files).
    """
    if os.path.lexists(root):
        if os.path.islink(root) or not root.is_dir():
            raise _refuse(root, "it is not a directory (a symlink?)")
        if os.path.lexists(root / _REPOSITORY_RECORD):
            raise _refuse(root, "it is a production repository")
        if _is_marked(root):
            return True
        with os.scandir(root) as entries:  # axon's own directory alone is an unmarked cache of an earlier release
            if any(e.name != INTERNAL_DIR for e in entries):
                raise _refuse(root, f"it holds files and no {CACHE_MARKER}")
    elif not create:
        return False
    if not create:
        raise _refuse(root, f"it has no {CACHE_MARKER}")
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        gid = 0
        if group is not None:
            with contextlib.suppress(KeyError):
                gid = grp.getgrnam(group).gr_gid
        os.chown(root, 0, gid)
        os.chmod(root, CACHE_ROOT_MODE if gid else 0o755)
    (root / INTERNAL_DIR).mkdir(exist_ok=True)
    atomic_write_text(root / CACHE_MARKER, _MARK.decode() +
                      f"created: {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\n", mode=0o644)
    return True


def _is_marked(root: Path) -> bool:
    """Whether *root* carries the cache's mark: a regular file (no symlink on the way) saying so."""
    try:
        data, _ = read_regular(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC),
                               CACHE_MARKER, limit=4096, close_dir=True)
    except OSError:
        return False
    return data.startswith(_MARK)
