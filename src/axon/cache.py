"""Read and maintain the dev cache: list, info, verify, remove, stats, gc."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axon.errors import AxonError, NotInstalledError
from axon.store.atomic import fsync_dir, remove_tree
from axon.store.integrity import VerifyReport, verify_version_dir
from axon.store.layout import MANIFEST_NAME, StoreLayout, VersionEntry, version_key
from axon.store.manifest import Manifest, load_manifest
from axon.store.spec import ModelSpec

__all__ = ["CachedModel", "GcReport", "gc", "get_installed", "list_installed", "remove", "stats", "verify"]


@dataclass(frozen=True, slots=True)
class CachedModel:
    spec: ModelSpec
    path: Path
    manifest: Manifest

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        src = m.source
        return {
            "spec": str(self.spec),
            "path": str(self.path),
            "size": m.total_size,
            "files": len(m.files),
            "digest": m.digest,
            "manifest_digest": m.manifest_digest,
            "source": src.get("type"),
            "revision": src.get("commit") or src.get("revision") or src.get("etag") or src.get("path"),
            "created": m.created,
        }


def _dir_size(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Blocks under *path*, each inode counted once (a version's files are links to blobs)."""
    seen = set() if seen is None else seen
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def list_installed(root: Path) -> list[CachedModel]:
    out = []
    for entry in StoreLayout(root).iter_versions():
        if not entry.has_manifest:
            continue
        try:
            manifest = load_manifest(entry.path / MANIFEST_NAME)
        except AxonError:
            continue
        out.append(CachedModel(entry.spec, entry.path, manifest))
    return out


def get_installed(root: Path, spec: ModelSpec) -> CachedModel:
    layout = StoreLayout(root)
    path = layout.version_dir(spec)
    if not (path / MANIFEST_NAME).is_file():
        raise NotInstalledError(str(spec))
    return CachedModel(spec, path, load_manifest(path / MANIFEST_NAME))


def verify(root: Path, spec: ModelSpec, *, progress: Callable[[int], object] | None = None) -> VerifyReport:
    model = get_installed(root, spec)
    return verify_version_dir(model.path, model.manifest, progress=progress)


def _prune_empty_parents(path: Path, stop: Path) -> None:
    parent = path.parent
    while parent != stop and parent.is_relative_to(stop):
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def remove(root: Path, spec: ModelSpec) -> Path:
    """Delete an installed version: renamed into trash first (atomic), then deleted; the blobs
    only it used go too (another version's files are never touched)."""
    layout = StoreLayout(root)
    path = layout.version_dir(spec)
    if not path.is_dir():
        raise NotInstalledError(str(spec))
    try:
        own = {f.sha256 for f in load_manifest(path / MANIFEST_NAME).files}
    except AxonError:
        own = set()
    with layout.lock(spec):
        layout.trash.mkdir(parents=True, exist_ok=True)
        doomed = layout.trash / f"{version_key(spec)}.{os.getpid()}"
        os.rename(path, doomed)
        fsync_dir(path.parent)
        remove_tree(doomed)
        _prune_empty_parents(path, layout.root)
    if own:
        layout.blobs.collect(_used_blobs(root), only=own)  # busy (an install running): left for cache gc
    return path


def _used_blobs(root: Path) -> set[str]:
    """The sha256 of every file of every installed version."""
    return {f.sha256 for m in list_installed(root) for f in m.manifest.files}


@dataclass(slots=True)
class GcReport:
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    dry_run: bool = False
    blobs_busy: bool = False  # an install held the blob store: unused blobs are left for the next gc

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "bytes_freed": self.bytes_freed, "dry_run": self.dry_run,
                "blobs_busy": self.blobs_busy}


def _part_in_use(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def gc(root: Path, *, dry_run: bool = False, keep_partial: bool = False) -> GcReport:
    """Remove incomplete version directories, stale staging dirs, trash and partial downloads."""
    layout = StoreLayout(root)
    report = GcReport(dry_run=dry_run)
    for entry in layout.iter_versions():
        if _valid(entry):
            continue
        report.bytes_freed += _dir_size(entry.path)
        report.removed.append(str(entry.path))
        if not dry_run:
            with layout.lock(entry.spec):
                remove_tree(entry.path)
                _prune_empty_parents(entry.path, layout.root)
    if layout.staging.is_dir():
        if dry_run:
            for d in layout.staging.iterdir():
                report.removed.append(str(d))
                report.bytes_freed += _dir_size(d)
        else:
            sizes = {d: _dir_size(d) for d in layout.staging.iterdir()}
            for d in layout.cleanup_stale_staging():
                report.removed.append(str(d))
                report.bytes_freed += sizes.get(d, 0)
    if layout.trash.is_dir():
        for d in layout.trash.iterdir():
            report.removed.append(str(d))
            report.bytes_freed += _dir_size(d)
            if not dry_run:
                remove_tree(d)
    if layout.downloads.is_dir() and not keep_partial:
        for p in sorted(layout.downloads.glob("*.part")):
            if _part_in_use(p):
                continue
            report.removed.append(str(p))
            report.bytes_freed += p.stat().st_blocks * 512
            if not dry_run:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)
                p.with_suffix(".parts.json").unlink(missing_ok=True)  # a ranged download's finished parts
    collected = layout.blobs.collect(_used_blobs(root), dry_run=dry_run)
    report.removed += collected.removed
    report.bytes_freed += collected.bytes_freed
    report.blobs_busy = collected.busy
    return report


def _valid(entry: VersionEntry) -> bool:
    if not entry.has_manifest:
        return False
    try:
        load_manifest(entry.path / MANIFEST_NAME)
    except AxonError:
        return False
    return True


def stats(root: Path) -> dict[str, Any]:
    layout = StoreLayout(root)
    models = list_installed(root)
    partial = sum(p.stat().st_blocks * 512 for p in layout.downloads.glob("*.part")) if layout.downloads.is_dir() else 0
    incomplete = [str(e.path) for e in layout.iter_versions() if not _valid(e)]
    return {
        "cache_dir": str(root),
        "models": len({m.spec.model_id for m in models}),
        "versions": len(models),
        "files": sum(len(m.manifest.files) for m in models),
        "size": sum(m.manifest.total_size for m in models),
        **_physical(layout, models),
        "disk_usage": _dir_size(root) if root.exists() else 0,
        "partial_downloads_bytes": partial,
        "incomplete_versions": incomplete,
        "free_bytes": _free(root),
    }


def _physical(layout: StoreLayout, models: list[CachedModel]) -> dict[str, Any]:
    """What the installed versions hold (logical) against what they take once stored by digest
    (physical: every distinct inode of theirs, each blob once; a reflinked file shares its blob's
    blocks, so it counts as its blob)."""
    blobs = dict(layout.blobs.blobs())
    seen: set[tuple[int, int]] = set()
    physical = 0
    for m in models:
        for f in m.manifest.files:
            try:
                st = os.lstat(m.path / f.path)
            except OSError:
                continue
            blob = blobs.get(f.sha256)
            reflinked = blob is not None and blob.st_size == st.st_size and st.st_nlink == 1
            if blob is not None and reflinked:
                st = blob  # a reflink of the blob: the blocks are the blob's
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                physical += st.st_size
    return {
        "logical_bytes": sum(m.manifest.total_size for m in models),
        "physical_bytes": physical,
        "blobs": len(blobs),
        "blob_bytes": sum(st.st_size for st in blobs.values()),
    }


def _free(root: Path) -> int | None:
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
