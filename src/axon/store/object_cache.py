"""A serving host's verified local copy of versions that live in an object store.

``fetch_version`` brings one version from an s3:// repository into a local directory laid out
like any repository (``<cache>/<ns>/<name…>/<version>/`` with its ``manifest.yaml``), so MLOS
Core's containment and hash checks then run on the local copy unchanged:

* every file is streamed into a partial file and hashed (sha256 + xxh3-128) as it is written; a
  partial file left by an interrupted fetch is resumed (its bytes are re-hashed, the rest is
  asked for with ``Range``);
* each file must match the manifest before anything moves; the manifest is written last, the
  tree made read-only and fsynced, and the version renamed (or exchanged with an older copy) into
  place in one step: a reader sees the old copy or the new one, never a partial one;
* *digest* pins the manifest (``axon.store.pin``): a version republished since (another digest)
  is refused before a byte of it is downloaded;
* a local copy is current when its manifest is byte for byte the published one (the same
  manifest digest): a republish that only changed the manifest (pooling, preprocessing) is
  fetched again too.

``evict`` removes the versions nobody uses any more; both work only in a directory that is a
cache (:mod:`axon.store.cache_dir`), never in a repository or anything else given by mistake.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Collection
from pathlib import Path

import xxhash

from axon.errors import AxonError, CacheConflictError, IntegrityError, NotPublishedError
from axon.store.atomic import fsync_dir, fsync_tree, move_into_place, remove_tree
from axon.store.cache_dir import DEFAULT_CACHE_DIR, open_cache_dir
from axon.store.fastio import FileDigest
from axon.store.integrity import mismatch, verify_version_dir
from axon.store.layout import MANIFEST_NAME, StoreLayout, version_key
from axon.store.manifest import FileEntry, Manifest, parse_manifest
from axon.store.modes import CACHE_DIR_MODE, FILE_MODE
from axon.store.nofollow import open_dir, set_tree_modes
from axon.store.pin import is_manifest_pin, pin_matches, published_as
from axon.store.s3 import READ_BYTES, ObjectStore
from axon.store.spec import ModelSpec

__all__ = ["DEFAULT_CACHE_DIR", "evict", "fetch_version", "hold_in_use", "published_manifest", "release_in_use"]



def published_manifest(store: ObjectStore, spec: ModelSpec) -> tuple[Manifest, bytes, str] | None:
    """(manifest, its bytes, its ETag) of *spec*'s version in the store, or None when it has none.
    A manifest that does not parse, or names another version, is damage (IntegrityError)."""
    where = f"{store.location}/{spec.relpath}/{MANIFEST_NAME}"
    found = store.get(f"{spec.relpath}/{MANIFEST_NAME}")
    if found is None:
        return None
    data, etag = found
    try:
        manifest = parse_manifest(data, where)
    except AxonError as exc:
        raise IntegrityError(f"The published manifest {where} is not valid: {str(exc).splitlines()[0]}",
                             hint=f"Republish it: axon publish {spec} --force") from None
    if manifest.spec_text != str(spec):
        raise IntegrityError(f"The manifest at {where} says {manifest.spec_text!r}; refusing it.",
                             hint=f"Republish it: axon publish {spec} --force")
    return manifest, data, etag


def _current_digest(path: Path, *, sha256: bool = False) -> str | None:
    """The manifest digest of the local copy, when its manifest parses and every file it lists
    matches it (xxh3-128, and with *sha256* sha256); None otherwise, and the copy is fetched
    again (a damaged copy heals itself)."""
    try:
        with open(path / MANIFEST_NAME, "rb") as f:
            manifest = parse_manifest(f.read(), str(path / MANIFEST_NAME), version_dir=path)
    except (OSError, AxonError):
        return None
    if not verify_version_dir(path, manifest, check_sha256=sha256).ok:
        return None
    return manifest.manifest_digest


def fetch_version(store: ObjectStore, spec: ModelSpec, cache_root: Path, *, digest: str | None = None) -> Path:
    """The verified local copy of *spec* (fetched when missing or another digest is there).

    Raises:
        NotPublishedError (not published), IntegrityError (a pinned digest that differs, or a
        downloaded file that does not match its manifest: nothing is moved into place).
    """
    found = published_manifest(store, spec)
    if found is None:
        raise NotPublishedError(f"{str(spec)!r} is not published in {store.location}.",
                                hint="List what is there with: axon published (with publish_dir set to it)")
    manifest, manifest_bytes, _ = found
    if not pin_matches(manifest, digest):
        assert digest is not None
        published = published_as(manifest, digest)
        raise IntegrityError(f"{str(spec)!r} is published in {store.location} with digest {published}, not "
                             f"the pinned {digest}; nothing was fetched.", expected=digest, actual=published)
    open_cache_dir(cache_root)
    layout = StoreLayout(cache_root)
    target = layout.version_dir(spec)
    _refuse_nesting(layout, spec)
    sha256 = is_manifest_pin(digest)  # a copy already here is held to the pin's standard too
    if _current_digest(target, sha256=sha256) == manifest.manifest_digest:
        return target
    layout.ensure_internal()
    downloads = layout.downloads / version_key(spec) / manifest.digest  # one version's leftovers: its lock covers them
    downloads.mkdir(parents=True, exist_ok=True)
    with layout.lock(spec, wait=True):
        if _current_digest(target, sha256=sha256) == manifest.manifest_digest:  # fetched meanwhile
            return target
        layout.cleanup_stale_staging()
        staging = layout.new_staging(spec)
        try:
            for entry in manifest.files:
                part = downloads / f"{entry.sha256}.part"
                _download_verified(store, f"{spec.relpath}/{manifest.digest}/{entry.path}", entry, part)
                dest = staging / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, dest)
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes)  # last: its presence means complete
            with open_dir(staging) as fd:
                set_tree_modes(fd, file_mode=FILE_MODE, dir_mode=CACHE_DIR_MODE, gid=None)
            fsync_tree(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            replace = os.path.lexists(target)
            if replace:
                os.chmod(target, 0o755)  # moving a directory to another parent updates its '..'
            os.chmod(staging, 0o755)
            move_into_place(staging, target, replace=replace)
            os.chmod(target, CACHE_DIR_MODE)
        finally:
            with contextlib.suppress(OSError):
                remove_tree(staging)  # after an exchange: the older copy
        for leftover in (downloads, downloads.parent):
            with contextlib.suppress(OSError):
                leftover.rmdir()
        fsync_dir(target)
    return target


def _refuse_nesting(layout: StoreLayout, spec: ModelSpec) -> None:
    """CacheConflictError when *spec*'s directory holds another cached version, or lies in one
    (``ns/a@b`` is ``ns/a/b/``, the parent of ``ns/a/b@c``'s): replacing one would take the other."""
    target = layout.version_dir(spec)
    around = [p for p in target.parents if p != layout.root and layout.root in p.parents]
    inner = [d for d in target.iterdir() if d.is_dir() and (d / MANIFEST_NAME).exists()] if target.is_dir() else []
    other = next((p for p in around if (p / MANIFEST_NAME).exists()), None) or (inner[0] if inner else None)
    if other is not None:
        raise CacheConflictError(f"{str(spec)!r} cannot be cached next to the version at {str(other)!r}: one's "
                                 "directory holds the other's.",
                                 hint="Unregister one of the two, or serve them from separate --cache-dir hosts.")


def _download_verified(store: ObjectStore, key: str, entry: FileEntry, part: Path) -> None:
    """*key* into *part* (resuming what an earlier fetch left there), checked against *entry*. A
    resumed file that does not verify is fetched once more from its first byte (the leftover
    could have been damaged) before the fetch is refused."""
    if part.exists() and _download_into(store, key, entry, part):
        return
    part.unlink(missing_ok=True)
    if not _download_into(store, key, entry, part):
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{key!r} in {store.location} does not match its manifest (expected {entry.size} bytes, "
                             f"sha256 {entry.sha256}); nothing was moved into place.", path=entry.path,
                             expected=entry.sha256, hint="Verify the repository: axon verify --published SPEC")


def _download_into(store: ObjectStore, key: str, entry: FileEntry, part: Path) -> bool:
    """Append what is missing of *key* to *part*; whether the whole file matches *entry*."""
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    with open(part, "ab+") as f:
        f.seek(0)
        have = 0
        while chunk := f.read(READ_BYTES):  # what an interrupted fetch left: hashed again, not trusted
            sha.update(chunk)
            xxh.update(chunk)
            have += len(chunk)
        if have > entry.size:
            f.truncate(0)
            sha, xxh, have = hashlib.sha256(), xxhash.xxh3_128(), 0
        if have < entry.size:
            def write(chunk: bytes) -> None:
                sha.update(chunk)
                xxh.update(chunk)
                f.write(chunk)

            got = store.download(key, write, offset=have, size=entry.size)
            have += got.size
        f.flush()
        os.fsync(f.fileno())
    return mismatch(entry, FileDigest(have, sha.hexdigest(), xxh.hexdigest())) is None


def hold_in_use(cache_root: Path, spec: ModelSpec) -> int:
    """Mark *spec*'s copy as in use (a shared lock, released with the returned descriptor by
    :func:`release_in_use` or the process's death) while it is fetched and loaded: no eviction,
    by this process or another, removes it meanwhile."""
    open_cache_dir(cache_root)
    layout = StoreLayout(cache_root)
    layout.locks.mkdir(parents=True, exist_ok=True)
    fd = StoreLayout.open_lock_file(layout.locks / (version_key(spec) + ".use"))
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def release_in_use(fd: int) -> None:
    os.close(fd)


def _unused(layout: StoreLayout, spec: ModelSpec) -> int | None:
    """The in-use lock of *spec* held exclusively (nobody fetching or loading it), or None."""
    layout.locks.mkdir(parents=True, exist_ok=True)
    fd = StoreLayout.open_lock_file(layout.locks / (version_key(spec) + ".use"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def evict(cache_root: Path, keep: Collection[ModelSpec]) -> list[ModelSpec]:
    """Remove every cached version not in *keep* (and leftover downloads); returns what went.
    A directory that is not a cache (``cache_dir.open_cache_dir``) is refused, never emptied."""
    if not open_cache_dir(cache_root, create=False):
        return []
    layout = StoreLayout(cache_root)
    wanted = {version_key(s) for s in keep}
    kept = [layout.version_dir(s) for s in keep]
    gone = []
    for entry in list(layout.iter_versions()):
        if version_key(entry.spec) in wanted or any(k.is_relative_to(entry.path) for k in kept):
            continue  # wanted, or holding a wanted version (ns/a@b is the parent of ns/a/b@c)
        use = _unused(layout, entry.spec)
        if use is None:
            continue  # being fetched or loaded (by any process): not unused
        try:
            with layout.lock(entry.spec, wait=True):
                with contextlib.suppress(OSError):
                    os.chmod(entry.path, 0o755)
                remove_tree(entry.path)
        finally:
            os.close(use)
        gone.append(entry.spec)
    return gone
