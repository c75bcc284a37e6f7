"""Who may publish (root, or a member of ``publish_group``) and the modes published trees get."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from axon.errors import PermissionDeniedError

__all__ = ["Caller", "apply_published_modes", "caller", "group_id", "require_publisher"]

FILE_MODE = 0o444
DIR_MODE = 0o2555  # read-only, setgid: nobody edits a published version in place
SHARED_DIR_MODE = 0o2775  # <root>/<ns>/<name…>/: group members add versions


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    uid: int
    groups: frozenset[int]

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def caller() -> Caller:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Caller(name, uid, frozenset({os.getegid(), *os.getgroups()}))


def group_id(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def require_publisher(group: str, who: Caller | None = None) -> int | None:
    """Return the group's gid if *who* may publish; raise PermissionDeniedError (exit 4) if not.

    Membership is what the process holds now (``getgroups``): a user just added to the group must
    log in again (or run ``newgrp``) before it counts, exactly as the kernel will see it.
    """
    who = who or caller()
    gid = group_id(group)
    if who.is_root:
        return gid
    if gid is None:
        raise PermissionDeniedError(
            f"Publishing needs the group {group!r}, which does not exist on this machine.",
            hint=f"An administrator creates it with the repository: sudo axon setup-production --group {group}")
    if gid not in who.groups:
        members = grp.getgrgid(gid).gr_mem
        listed = who.name in members
        raise PermissionDeniedError(
            f"User {who.name!r} may not publish: publishing needs root or membership of group {group!r}"
            + (" (you were added, but this session does not have it yet)." if listed else "."),
            hint=(f"Log in again, or run: newgrp {group}" if listed
                  else f"Ask an administrator to run: sudo usermod -aG {group} {who.name} (then log in again)"))
    return gid


def apply_published_modes(version_dir: Path, gid: int | None, *, keep_top_writable: bool = True) -> None:
    """Files 0444, directories 2555, group *gid*; the version directory itself stays writable by
    its owner until it has been renamed into place (moving a directory needs write on it)."""
    for dirpath, dirnames, filenames in os.walk(version_dir, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if gid is not None:
                os.chown(p, -1, gid, follow_symlinks=False)
            os.chmod(p, FILE_MODE)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if gid is not None:
                os.chown(p, -1, gid, follow_symlinks=False)
            os.chmod(p, DIR_MODE)
    if gid is not None:
        os.chown(version_dir, -1, gid)
    os.chmod(version_dir, (DIR_MODE | stat.S_IWUSR) if keep_top_writable else DIR_MODE)


def ensure_shared_dirs(root: Path, target_parent: Path, gid: int | None) -> None:
    """Create ``<root>/<ns>/<name…>/`` as group-writable setgid directories."""
    missing = []
    p = target_parent
    while p != root and not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=SHARED_DIR_MODE)
        except FileExistsError:
            continue
        if gid is not None:
            os.chown(d, -1, gid)
        os.chmod(d, SHARED_DIR_MODE)  # the umask may have taken group write away
