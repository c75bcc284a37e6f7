"""Who may publish (root, or a member of ``publish_group``) and the modes published trees get."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from axon.errors import PermissionDeniedError
from axon.store.modes import DIR_MODE, FILE_MODE, SHARED_DIR_MODE
from axon.store.nofollow import open_dir, set_tree_modes

__all__ = ["Caller", "adopt_dir", "apply_published_modes", "caller", "ensure_shared_dirs", "group_id", "make_dir",
           "owner_name", "require_publisher"]

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


def apply_published_modes(version_dir: Path, gid: int | None, *, uid: int | None = None,
                          keep_top_writable: bool = True) -> None:
    """Files 0444, directories 2555, group *gid* (and owner *uid*, when root takes a copy over);
    the version directory itself stays writable by its owner until it has been renamed into
    place (moving a directory needs write on it). Every entry is changed through its own fd:
    a symlink anywhere in the tree is refused, never followed."""
    with open_dir(version_dir) as fd:
        set_tree_modes(fd, file_mode=FILE_MODE, dir_mode=DIR_MODE, gid=gid, uid=uid)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, (DIR_MODE | stat.S_IWUSR) if keep_top_writable else DIR_MODE)


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def make_dir(path: Path, mode: int, gid: int | None = None) -> None:
    """mkdir *path* (FileExistsError if it is there), then its group and exact *mode* through its
    own fd (the umask may have taken group write away; the name is never looked up again)."""
    os.mkdir(path, mode)
    with open_dir(path) as fd:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)


def adopt_dir(path: Path, gid: int | None, mode: int) -> None:
    """Root makes *path* (a real directory, never a symlink) root's own, with *gid* and *mode*."""
    with open_dir(path) as fd:
        os.fchown(fd, 0, -1 if gid is None else gid)
        os.fchmod(fd, mode)
        ino = os.fstat(fd).st_ino
    st = os.lstat(path)
    if st.st_ino != ino or st.st_uid != 0:  # renamed away and replaced while we adopted it
        raise PermissionDeniedError(f"{str(path)!r} changed while it was being made the repository's; refusing.",
                                    hint="Check who is writing to the repository, then run the command again.")


def ensure_shared_dirs(root: Path, target_parent: Path, gid: int | None, who: Caller | None = None, *,
                       create: bool = True) -> None:
    """Create or check ``<root>/<ns>/<name…>/``: sticky, group-writable, setgid directories.

    Each must be a real directory owned by root or by the caller: a directory another member
    owns would let them rename or hide what is published inside it (the sticky bit lets a
    directory's owner rename any entry), or swap it for a symlink between two of root's path
    lookups. Root adopts such a directory (makes it root's). Once this returns, no one but root
    and the caller can change what the path resolves to.
    """
    who = who or caller()
    cur = root
    for part in target_parent.relative_to(root).parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                return
            try:
                make_dir(cur, SHARED_DIR_MODE, gid)
            except FileExistsError:
                st = os.lstat(cur)
            else:
                continue
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise PermissionDeniedError(f"{str(cur)!r} is {what}; refusing to publish through it.",
                                        hint=f"An administrator removes it: sudo rm {cur}")
        if st.st_uid not in (0, who.uid):
            if not who.is_root:
                raise PermissionDeniedError(
                    f"{str(cur)!r} belongs to {owner_name(st.st_uid)!r}, who could rename or hide what you publish "
                    "there.",
                    hint=f"An administrator makes it the repository's: sudo axon setup-production --dir {root}")
            adopt_dir(cur, gid, SHARED_DIR_MODE)
        elif stat.S_IMODE(st.st_mode) != SHARED_DIR_MODE:
            with open_dir(cur) as fd:
                os.fchmod(fd, SHARED_DIR_MODE)  # an older repository's 2775: add the sticky bit
