"""The production repository's own settings and its one-time, as-root set-up (``axon setup-production``).

``<root>/.axon/repository.yaml`` (root's, 0644) records the repository's group: a member of that
group publishes without any configuration of their own.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import yaml

from axon.errors import AxonError, PermissionDeniedError
from axon.permissions import group_id
from axon.store.atomic import atomic_write_text
from axon.store.layout import INTERNAL_DIR, MANIFEST_NAME
from axon.store.modes import (
    AUDIT_LOG_MODE,
    CORE_DIR_MODE,
    HISTORY_KEY_MODE,
    RECORD_MODE,
    SHARED_DIR_MODE,
    STATE_DIR_MODE,
)
from axon.store.nofollow import open_dir, read_regular

__all__ = ["RECORD_NAME", "read_repository_group", "setup_production"]

STATE_DIRS = ("staging", "locks", "history", "audit.d")
RECORD_NAME = "repository.yaml"


def _create_group(group: str) -> int:
    tool = shutil.which("groupadd") or shutil.which("addgroup")
    if tool is None:
        raise AxonError(f"Group {group!r} does not exist and neither groupadd nor addgroup is installed.",
                        hint=f"Create the group yourself, then run again: groupadd --system {group}")
    args = [tool, "--system", group]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    gid = group_id(group)
    if proc.returncode != 0 or gid is None:
        raise AxonError(f"Creating group {group!r} failed: {proc.stderr.strip() or proc.returncode}.")
    return gid


def _own(path: Path, gid: int, mode: int) -> None:
    """root:gid and *mode* on a real directory or file, through its fd (never a symlink)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise AxonError(f"{str(path)!r} is a symlink; refusing to set up the repository through it.",
                        hint=f"Remove it (rm {path}) and run setup-production again.")
    if stat.S_ISDIR(st.st_mode):
        with open_dir(path) as fd:
            _own_fd(fd, gid, mode)
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _own_fd(fd, gid, mode)
    finally:
        os.close(fd)


def _own_fd(fd: int, gid: int, mode: int) -> None:
    """Only what differs is changed: an append-only file (the audit log after the first set-up)
    refuses even root's chown, so a second set-up must not need one."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (0, gid):
        os.fchown(fd, 0, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def read_repository_group(root: Path) -> str | None:
    """The group recorded by ``setup-production`` (None for a repository set up by hand)."""
    try:
        with open_dir(root / INTERNAL_DIR) as fd:
            data, _ = read_regular(fd, RECORD_NAME, limit=1 << 16)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise AxonError(f"Cannot read {str(root / INTERNAL_DIR / RECORD_NAME)!r}: {exc.strerror}.",
                        hint=f"An administrator repairs it: sudo axon setup-production --dir {root}") from None
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        doc = None
    group = doc.get("group") if isinstance(doc, dict) else None
    if not isinstance(group, str) or not group:
        raise AxonError(f"{str(root / INTERNAL_DIR / RECORD_NAME)!r} does not name the repository's group.",
                        hint=f"An administrator repairs it: sudo axon setup-production --dir {root}")
    return group


def _adopt_below(fd: int, gid: int, depth: int) -> int:
    """Under an opened shared directory: make each subdirectory that is not a version root's,
    through its own fd (openat O_NOFOLLOW: a symlink swapped in is never followed)."""
    count = 0
    with os.scandir(fd) as it:
        names = sorted(e.name for e in it if not e.name.startswith("."))
    for name in names:
        try:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            continue  # a file, a symlink, or gone: not a shared directory
        try:
            try:
                os.stat(MANIFEST_NAME, dir_fd=child, follow_symlinks=False)
                continue  # a version: its publisher's
            except FileNotFoundError:
                pass
            if depth == 3:  # <ns>/<org>/<repo>/ holds versions; <ns>/<name>/<version>/ (partial) files only
                with os.scandir(child) as it:
                    if not any(e.is_dir(follow_symlinks=False) for e in it):
                        continue
            st = os.fstat(child)
            if st.st_uid != 0 or st.st_gid != gid or stat.S_IMODE(st.st_mode) != SHARED_DIR_MODE:
                os.fchown(child, 0, gid)
                os.fchmod(child, SHARED_DIR_MODE)
                count += 1
            if depth < 3:
                count += _adopt_below(child, gid, depth + 1)
        finally:
            os.close(child)
    return count


def _adopt_shared_dirs(root: Path, gid: int) -> int:
    """Make every <ns>/ and <name…>/ directory root's, sticky and group-writable; returns how many."""
    with open_dir(root) as fd:
        return _adopt_below(fd, gid, 1)


def setup_production(root: Path, group: str) -> dict[str, Any]:
    """Create *group* if missing, then ``root`` and ``root/.axon/`` with the permission model.

    Idempotent: running it again repairs ownership and modes (an older repository gets its sticky
    bits; namespace directories members created become root's) and changes nothing else.
    """
    if os.geteuid() != 0:
        raise PermissionDeniedError("setup-production creates a group and a system directory: it must run as root.",
                                    hint=f"Run: sudo axon setup-production --dir {root} --group {group}")
    created_group = False
    gid = group_id(group)
    if gid is None:
        gid = _create_group(group)
        created_group = True
    root.mkdir(parents=True, exist_ok=True)
    _own(root, gid, SHARED_DIR_MODE)
    internal = root / INTERNAL_DIR
    internal.mkdir(exist_ok=True)
    _own(internal, gid, STATE_DIR_MODE)
    for name in STATE_DIRS:
        d = internal / name
        d.mkdir(exist_ok=True)
        _own(d, gid, SHARED_DIR_MODE)
    core = internal / "core"  # MLOS Core's token and registrations; left as it is when it exists
    if not os.path.lexists(core):
        core.mkdir()
        _own(core, gid, CORE_DIR_MODE)
    history = internal / "history"
    for key_dir in history.iterdir():
        st = os.lstat(key_dir)
        if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != HISTORY_KEY_MODE:
            with open_dir(key_dir) as fd:
                os.fchmod(fd, HISTORY_KEY_MODE)  # owner kept: each version's history is its owner's
    adopted = _adopt_shared_dirs(root, gid)
    record = internal / RECORD_NAME
    atomic_write_text(record, yaml.safe_dump({"group": group, "gid": gid}, sort_keys=False), mode=RECORD_MODE)
    _own(record, gid, RECORD_MODE)
    audit = internal / "audit.log"
    fd = os.open(audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, AUDIT_LOG_MODE)
    os.close(fd)
    try:
        _own(audit, gid, AUDIT_LOG_MODE)
    except PermissionError:  # append-only with the wrong owner or mode (say, a new group): lifted for the change
        if not shutil.which("chattr"):
            raise
        subprocess.run(["chattr", "-a", str(audit)], capture_output=True, check=False)
        _own(audit, gid, AUDIT_LOG_MODE)
    append_only = False
    if shutil.which("chattr"):
        # Kernel-enforced append-only: not even a group member can rewrite history.
        append_only = subprocess.run(["chattr", "+a", str(audit)], capture_output=True, check=False).returncode == 0
    return {"root": str(root), "group": group, "gid": gid, "created_group": created_group,
            "state_dir": str(internal), "audit_log": str(audit), "audit_append_only": append_only,
            "record": str(record), "adopted_dirs": adopted}
