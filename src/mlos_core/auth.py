"""Admin bearer token: a file nobody but root and the server's user could have planted, created on
first start (directory 2750, file 0640, both with the repository's group: readable only by root
and the publish group), compared in constant time.

Whoever can write the token file, replace it, or rename its directory (or any directory above it)
chooses the admin token. So at start the server refuses (``TokenFileError``, one line with the fix):

* a token file that is a symlink, not a regular file, owned by anyone but root or the server's
  user, or writable by its group or others;
* a token directory that is a symlink, owned by anyone else, or writable by its group or others;
* an ancestor directory that someone else could write, i.e. owned by another user, writable by
  others, or writable by a group with members other than root and the server's user. Such an
  ancestor is acceptable only if it is sticky (like ``/tmp``) and the entry in it on the way to the
  token is owned by root or the server's user (a sticky directory lets nobody else rename it).

The ancestors are checked both as written and with symlinks resolved.
"""

from __future__ import annotations

import contextlib
import grp
import hmac
import logging
import os
import pwd
import secrets
import stat
from pathlib import Path

from starlette.requests import Request

from axon.store.atomic import atomic_write_text
from axon.store.modes import CORE_DIR_MODE, CORE_FILE_MODE
from mlos_core.errors import ApiError

__all__ = ["TOKEN_DIR_MODE", "TOKEN_FILE_MODE", "TokenFileError", "check_token_file", "load_or_create_token",
           "require_admin"]

log = logging.getLogger("mlos_core.auth")

TOKEN_DIR_MODE = CORE_DIR_MODE  # setgid: the token file gets the directory's (the repository's) group
TOKEN_FILE_MODE = CORE_FILE_MODE


class TokenFileError(Exception):
    """The token file (or a directory on its way) could have been written by someone else."""


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_has_others(gid: int) -> bool:
    """Whether a user other than root and the server's user is in group *gid* (as listed by NSS)."""
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        return True  # a group nobody can name: assume the worst
    uids = set()
    for name in members:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            return True
    uids.update(p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid)
    return any(not _trusted(u) for u in uids)


def _writable_by_others(st: os.stat_result) -> bool:
    return (not _trusted(st.st_uid) or bool(st.st_mode & stat.S_IWOTH)
            or bool(st.st_mode & stat.S_IWGRP and _group_has_others(st.st_gid)))


def _check_own(path: Path, st: os.stat_result, what: str) -> None:
    """Owner root or euid, no group/other write bit: the rule for the token file and its directory."""
    me = _user(os.geteuid())
    if not _trusted(st.st_uid):
        raise TokenFileError(f"{what} {str(path)!r} is owned by {_user(st.st_uid)!r}, not root or the server's user "
                             f"{me!r}, so its owner could plant the admin token; fix: chown {me} {path}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "others"}.get(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH),
                                                                       "its group and others")
        raise TokenFileError(f"{what} {str(path)!r} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}), so "
                             f"they could plant the admin token; fix: chmod go-w {path}")


def _check_ancestors(directory: Path) -> None:
    """Every (parent, child) step above *directory*, as written and resolved: a parent someone else
    can write must be sticky, and the child in it owned by root or the server's user."""
    for chain in (directory, Path(os.path.realpath(directory))):
        child = chain
        for parent in chain.parents:
            pst = os.stat(parent)
            if _writable_by_others(pst):
                if not _trusted(pst.st_uid):
                    raise TokenFileError(
                        f"directory {str(parent)!r} above the token file belongs to {_user(pst.st_uid)!r}, who could "
                        f"replace what is in it and plant the admin token; fix: chown root {parent} (or move the token "
                        "file: --token-file)")
                cst = os.lstat(child)
                if not (pst.st_mode & stat.S_ISVTX and _trusted(cst.st_uid)):
                    raise TokenFileError(
                        f"directory {str(parent)!r} above the token file is writable by others (mode "
                        f"{stat.S_IMODE(pst.st_mode):04o}) without the sticky bit protecting {str(child)!r}, so "
                        f"{str(child)!r} could be replaced and the admin token planted; fix: chmod +t {parent} "
                        f"(and chown root {child}) or chmod go-w {parent}")
            child = parent


def _check_directory(directory: Path) -> None:
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise TokenFileError(f"token directory {str(directory)!r} is a symlink; whoever can change it chooses the "
                             "admin token; fix: point --token-file into the real directory "
                             f"{os.path.realpath(directory)}")
    if not stat.S_ISDIR(st.st_mode):
        raise TokenFileError(f"token directory {str(directory)!r} is not a directory")
    _check_own(directory, st, "token directory")
    _check_ancestors(directory)


def check_token_file(path: Path) -> str:
    """The token in *path* after checking the file, its directory and its ancestors; raises
    TokenFileError (one line, with the fix) if anyone else could have written it."""
    path = Path(os.path.abspath(path))
    _check_directory(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise TokenFileError(f"token file {str(path)!r} is a symlink; whoever can change it chooses the admin "
                                 f"token; fix: replace it with a regular file (rm {path}; the server creates a new "
                                 "one) or point --token-file at the real file") from None
        raise TokenFileError(f"cannot open token file {str(path)!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"token file {str(path)!r} is not a regular file")
        _check_own(path, st, "token file")
        if st.st_mode & stat.S_IROTH:
            log.warning("token file %s is readable by others (mode %04o); fix: chmod 640 %s", path,
                        stat.S_IMODE(st.st_mode), path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read()
    finally:
        os.close(fd)
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""
    if not token:
        raise TokenFileError(f"token file {str(path)!r} holds no token (one line of UTF-8 text); fix: rm {path} and "
                             "restart the server (it creates a new one)")
    return token


def _make_token_directory(directory: Path, gid: int | None) -> None:
    """Create the missing directories up to *directory*; the last one 2750 with the repository's group."""
    missing = []
    d = directory
    while not os.path.lexists(d):
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        os.mkdir(d, 0o755)
    if missing:
        os.chmod(directory, TOKEN_DIR_MODE)
        if gid is not None:
            try:
                os.chown(directory, -1, gid)
            except OSError as exc:
                log.warning("could not give token directory %s the repository's group: %s", directory, exc)
        log.info("created token directory %s (mode %o)", directory, TOKEN_DIR_MODE)


def load_or_create_token(path: Path, group_from: Path | None) -> str:
    """The admin token from *path*, created there if missing (0640, of *group_from*'s group: the
    repository's; or of the server's own group); raises TokenFileError when the file or a directory
    on its way could have been written by someone else."""
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        gid: int | None = None
        with contextlib.suppress(OSError):
            gid = group_from.stat().st_gid if group_from is not None else None
        _make_token_directory(path.parent, gid)
        _check_directory(path.parent)  # before writing a secret into it
        atomic_write_text(path, secrets.token_urlsafe(32) + "\n", mode=TOKEN_FILE_MODE)
        if gid is not None:
            try:
                os.chown(path, -1, gid)  # readable by root and the publish group only
            except OSError as exc:
                log.warning("could not give token file %s the repository's group: %s", path, exc)
        log.info("created admin token file %s", path)
    return check_token_file(path)


def require_admin(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "admin call: send 'Authorization: Bearer <token>' (the token file is "
                       "readable by root and the publish group)", headers={"WWW-Authenticate": "Bearer"})
