"""Install (and update) models into the dev cache.

Every install downloads into a staging directory inside the cache root, hashing while it writes;
the manifest is written last, the tree is fsynced, and only then is it renamed into place. A
version directory without a valid manifest is never considered installed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from axon.errors import UsageError
from axon.package import build_manifest
from axon.reporting import NullReporter, Reporter
from axon.settings import Settings
from axon.sources import FetchResult, select_source
from axon.store.atomic import fsync_tree, move_into_place, remove_tree
from axon.store.blobs import BlobStore
from axon.store.fastio import FileDigest
from axon.store.layout import StoreLayout
from axon.store.manifest import Manifest, read_version_manifest, write_manifest
from axon.store.spec import ModelSpec

__all__ = ["InstallResult", "install"]


@dataclass(frozen=True, slots=True)
class InstallResult:
    spec: ModelSpec
    path: Path
    manifest: Manifest
    status: str  # installed | replaced | unchanged | already-installed


def install(
    spec: ModelSpec,
    settings: Settings,
    *,
    from_: str | None = None,
    revision: str | None = None,
    sha256: str | None = None,
    entrypoint: str | None = None,
    force: bool = False,
    only_if_changed: bool = False,
    export: bool = False,
    reporter: Reporter | None = None,
) -> InstallResult:
    """Fetch *spec* into the dev cache.

    With *force*, an installed version is replaced atomically (the old tree is swapped out with
    ``renameat2(RENAME_EXCHANGE)`` and then deleted). With *only_if_changed* (``axon update``),
    identical content leaves the installed version untouched. With *export*, the source's
    safetensors checkpoint is exported to ONNX and checked against PyTorch (:mod:`axon.export`).

    Raises:
        UsageError, SourceError, IntegrityError, InvalidModelError, DiskFullError, BusyError.
    """
    reporter = reporter or NullReporter()
    layout = StoreLayout(settings.cache_dir)
    target = layout.version_dir(spec)
    existing = read_version_manifest(layout, spec)
    if existing is not None and not force and not only_if_changed:
        return InstallResult(spec, target, existing, "already-installed")
    layout.ensure_internal()
    if export and entrypoint:
        raise UsageError("--entrypoint and --export exclude each other: --export makes model.onnx.")
    blobs = layout.blobs
    source = select_source(spec, settings, layout.downloads, from_=from_, revision=revision, sha256=sha256,
                           entrypoint=entrypoint, export=export, blobs=blobs)
    with layout.lock(spec), blobs.in_use():
        layout.cleanup_stale_staging()
        existing = read_version_manifest(layout, spec)
        if only_if_changed and existing is not None and existing.source.get("type") == "hf":
            resolve_commit = getattr(source, "resolve_commit", None)
            if resolve_commit is not None and resolve_commit() == existing.source.get("commit"):
                return InstallResult(spec, target, existing, "unchanged")
        staging = layout.new_staging(spec)
        try:
            reporter.stage(f"fetching {spec} from {source.describe()}")
            fetched = source.fetch(staging, reporter)
            if export:
                from axon.export import export_checkpoint

                reporter.stage("exporting to ONNX and checking it against PyTorch")
                fetched.source["export"] = export_checkpoint(staging, fetched.digests)
                fetched.entrypoint = "model.onnx"
            reporter.stage("reading the ONNX graph")
            manifest = build_manifest(spec, staging, fetched, entrypoint=entrypoint)
            if existing is not None and existing.digest == manifest.digest and only_if_changed:
                return InstallResult(spec, target, existing, "unchanged")
            _store_once(blobs, staging, manifest, fetched, reporter)
            write_manifest(staging, manifest)  # last file written: its presence means complete
            fsync_tree(staging)
            blobs.sync()
            target.parent.mkdir(parents=True, exist_ok=True)
            replace = target.exists()
            move_into_place(staging, target, replace=replace)  # the replaced copy, if any, is deleted below
            status = "replaced" if replace else "installed"
            return InstallResult(spec, target, manifest, status)
        finally:
            with contextlib.suppress(OSError):
                remove_tree(staging)



def _store_once(blobs: BlobStore, staging: Path, manifest: Manifest, fetched: FetchResult,
                reporter: Reporter) -> None:
    """Every package file into the blob store: one already there (the same sha256) becomes a
    link to it, a new one becomes its blob; the version directory keeps a plain file at each name."""
    shared = 0
    for entry in manifest.files:
        path = staging / entry.path
        if entry.path in fetched.reused:
            continue  # placed from the store by the source
        digest = FileDigest(entry.size, entry.sha256, entry.xxh3_128)
        if blobs.adopt(path, digest, git_sha1=fetched.git_ids.get(entry.path)):
            shared += entry.size
    if shared:
        reporter.stage(f"{shared} bytes were already in the cache under another version: stored once")
