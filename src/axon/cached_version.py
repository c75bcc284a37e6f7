"""The dev-cache side of a publish: one version opened so that what is checked is what is copied.

The dev cache belongs to an unprivileged user who can swap any file in it at any moment,
``manifest.yaml`` included, while root publishes it. So the version directory is opened once
beneath the cache root without following any symlink; ``manifest.yaml`` is read once through
that descriptor and its bytes are both what is parsed and what is written into production; each
listed file is opened the same way, checked (a regular file of the listed size, owned by the
owner of the version directory: never a hard link to somebody else's file) and copied from
that open file (``/proc/self/fd/N``), never by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from axon.errors import IntegrityError, InvalidManifestError, NotInstalledError
from axon.permissions import owner_name
from axon.store.fastio import open_beneath
from axon.store.layout import MANIFEST_NAME
from axon.store.manifest import FileEntry, Manifest, parse_manifest
from axon.store.nofollow import read_regular
from axon.store.spec import ModelSpec

__all__ = ["CachedVersion", "open_cached_version"]


@dataclass
class CachedVersion:
    spec: ModelSpec
    path: Path
    fd: int  # the version directory
    owner: int
    manifest: Manifest
    manifest_bytes: bytes  # exactly what was parsed

    def _refuse(self, entry: FileEntry, why: str) -> IntegrityError:
        return IntegrityError(f"Integrity check failed for {str(self.spec)!r}: cached file {entry.path!r} {why}; "
                              "nothing was published.", path=entry.path,
                              hint=f"Reinstall it with: axon install {self.spec} --force")

    def open_file(self, entry: FileEntry) -> int:
        """An fd of *entry*'s file, checked; the caller closes it."""
        try:
            fd = open_beneath(self.fd, entry.path, os.O_RDONLY | os.O_NONBLOCK, follow_symlinks=False)
        except FileNotFoundError:
            raise self._refuse(entry, "is missing") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV):
                raise self._refuse(entry, "is a symlink (or lies behind one); only regular files are published") \
                    from None
            if exc.errno == errno.ENOTDIR:
                raise self._refuse(entry, "lies below something that is not a directory") from None
            raise self._refuse(entry, f"cannot be read ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(entry, "is not a regular file")
            if st.st_uid != self.owner:
                raise self._refuse(entry, f"belongs to {owner_name(st.st_uid)!r}, not to the owner of the cached "
                                   f"version ({owner_name(self.owner)!r})")
            if st.st_size != entry.size:
                raise self._refuse(entry, "does not have the size its manifest records")
        except BaseException:
            os.close(fd)
            raise
        return fd


@contextlib.contextmanager
def open_cached_version(cache_root: Path, spec: ModelSpec) -> Iterator[CachedVersion]:
    """Open *spec* in the dev cache for publishing.

    Raises:
        NotInstalledError (1), IntegrityError (3: a symlink or foreign file where the package
        should be), InvalidManifestError (2).
    """
    path = cache_root / spec.relpath
    try:
        # The cache root itself must not be a symlink either (a user pointing "their" cache at
        # somebody else's would have root publish that one), and what lies beneath it must
        # belong to the cache's owner.
        rootfd = os.open(cache_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.islink(cache_root):
            raise NotInstalledError(str(spec)) from None
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW | O_DIRECTORY on a symlink: either
            raise IntegrityError(f"The dev cache {str(cache_root)!r} is a symlink; refusing to publish from it.",
                                 path=str(cache_root), hint="Point cache_dir at the real directory.") from None
        raise
    try:
        root_owner = os.fstat(rootfd).st_uid
        vfd = open_beneath(rootfd, spec.relpath, os.O_RDONLY | os.O_DIRECTORY, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotInstalledError(str(spec)) from None
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            raise IntegrityError(f"The cached copy of {str(spec)!r} is reached through a symlink; refusing it.",
                                 path=str(path), hint=f"Reinstall it with: axon install {spec} --force") from None
        raise
    finally:
        os.close(rootfd)
    try:
        st = os.fstat(vfd)
        if st.st_uid != root_owner:
            raise IntegrityError(f"The cached copy of {str(spec)!r} belongs to {owner_name(st.st_uid)!r}, not to the "
                                 f"owner of the dev cache ({owner_name(root_owner)!r}); refusing it.", path=str(path),
                                 hint=f"Reinstall it with: axon install {spec} --force")
        try:
            data, mst = read_regular(vfd, MANIFEST_NAME)
        except FileNotFoundError:
            raise NotInstalledError(str(spec)) from None
        except OSError as exc:
            raise IntegrityError(f"The manifest of the cached copy of {str(spec)!r} is not a regular file "
                                 f"({exc.strerror}); refusing it.", path=MANIFEST_NAME,
                                 hint=f"Reinstall it with: axon install {spec} --force") from None
        if mst.st_uid != st.st_uid:
            raise IntegrityError(f"The manifest of the cached copy of {str(spec)!r} belongs to "
                                 f"{owner_name(mst.st_uid)!r}, not to the owner of the version; refusing it.",
                                 path=MANIFEST_NAME, hint=f"Reinstall it with: axon install {spec} --force")
        manifest = parse_manifest(data, str(path / MANIFEST_NAME))
        if (manifest.namespace, manifest.name, manifest.version) != (spec.namespace, spec.name, spec.version):
            raise InvalidManifestError(f"The manifest in {str(path)!r} is for {manifest.spec_text!r}, not "
                                       f"{str(spec)!r}.", hint=f"Reinstall it with: axon install {spec} --force")
        yield CachedVersion(spec, path, vfd, st.st_uid, manifest, data)
    finally:
        os.close(vfd)
