"""Promotion from the dev cache into the production repository, and its undo.

``publish`` runs, in order: permission check -> verify the cached copy -> copy into a staging
directory inside the production root (fast copy, hashed) -> fsync -> compare the copy with the
manifest -> group, read-only modes, setgid directories -> atomic rename (or exchange, with
``--force``) into ``<root>/<ns>/<name…>/<version>/`` -> fsync the parent -> audit record.
Every step can fail or be killed; at every instant each version under the root is either the
old complete copy or the new complete copy.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axon.atomic import fsync_dir, remove_tree
from axon.audit import AuditLog, AuditRecord
from axon.cache import get_installed
from axon.errors import AlreadyInstalledError, AxonError, IntegrityError, PermissionDeniedError
from axon.fastio import copy_files, rename_exchange
from axon.install import cleanup_stale_staging, installed_manifest
from axon.integrity import VerifyReport, verify_version_dir
from axon.layout import MANIFEST_NAME, StoreLayout
from axon.manifest import Manifest, load_manifest
from axon.permissions import apply_published_modes, ensure_shared_dirs, require_publisher
from axon.reporting import NullReporter, Reporter
from axon.settings import Settings
from axon.spec import ModelSpec

__all__ = [
    "AlreadyPublishedError",
    "ProductionRepo",
    "PublishResult",
    "publish",
    "published",
    "rollback",
    "unpublish",
    "verify_published",
]


class AlreadyPublishedError(AlreadyInstalledError):
    """The version is published with other content and --force was not given."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    spec: ModelSpec
    path: Path
    status: str  # published | replaced | unchanged | dry-run
    digest: str
    digest_old: str | None = None
    size: int = 0
    files: int = 0
    seconds: float = 0.0
    history: Path | None = None


class ProductionRepo:
    """The production root: versions, axon's state dir, history and audit log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.publish_dir
        self.layout = StoreLayout(self.root)
        self.audit = AuditLog(self.layout.internal / "audit.log")

    @property
    def history(self) -> Path:
        return self.layout.internal / "history"

    def history_dir(self, spec: ModelSpec) -> Path:
        return self.history / "--".join(spec.parts)

    def history_entries(self, spec: ModelSpec) -> list[Path]:
        """Replaced copies of *spec*, oldest first (names start with a sortable UTC time)."""
        d = self.history_dir(spec)
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def check_ready(self) -> None:
        if not self.root.is_dir():
            raise AxonError(
                f"The production repository {str(self.root)!r} does not exist.",
                hint="An administrator creates it once with: sudo axon setup-production "
                f"--dir {self.root} --group {self.settings.publish_group}")
        if not os.access(self.root, os.W_OK | os.X_OK) or (
                self.layout.internal.exists() and not os.access(self.layout.internal, os.W_OK | os.X_OK)):
            raise PermissionDeniedError(
                f"Cannot write to the production repository {str(self.root)!r}.",
                hint=f"It should be group {self.settings.publish_group!r} with mode 2775: "
                f"sudo axon setup-production --dir {self.root} --group {self.settings.publish_group}")
        for d in (self.layout.staging, self.layout.locks, self.history):
            if not d.exists():
                d.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    os.chmod(d, 0o2775)

    def current(self, spec: ModelSpec) -> Manifest | None:
        return installed_manifest(self.layout, spec)

    def record(self, action: str, spec: ModelSpec, result: str, **kw: Any) -> None:
        self.audit.append(AuditRecord(action=action, spec=str(spec), result=result, **kw))


def _stamp(digest: str | None) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:] + f"-{(digest or 'none')[:12]}"


def _shared_mkdir(path: Path) -> None:
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o2775)  # other members of the group add history here too


def _make_movable(path: Path) -> None:
    """Moving a directory to another parent needs write permission on it (to update '..')."""
    try:
        os.chmod(path, os.stat(path).st_mode | 0o200)
    except PermissionError:
        owner = path.stat().st_uid
        raise PermissionDeniedError(
            f"Version directory {str(path)!r} belongs to uid {owner}; only its publisher or root can move it.",
            hint="Run the command as root (sudo) or as the user who published that version.") from None


def _check_copy(manifest: Manifest, results: list[Any]) -> None:
    for entry, got in zip(manifest.files, results, strict=False):
        if got.size != entry.size or got.sha256 != entry.sha256 or got.xxh3_128 != entry.xxh3_128:
            raise IntegrityError(
                f"The copy of {entry.path!r} in staging does not match the manifest "
                f"(sha256 {got.sha256}, expected {entry.sha256}); nothing was published.",
                path=entry.path, expected=entry.sha256, actual=str(got.sha256),
                hint="Check the disk (dmesg) and run the command again.")


def publish(spec: ModelSpec, settings: Settings, *, force: bool = False, dry_run: bool = False,
            reporter: Reporter | None = None, before_rename: Callable[[Path], None] | None = None) -> PublishResult:
    """Promote *spec* from the dev cache into the production repository.

    Raises:
        PermissionDeniedError (4), NotInstalledError (1), IntegrityError (3),
        AlreadyPublishedError (1, without --force), DiskFullError (1).
    """
    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    gid = require_publisher(settings.publish_group)
    repo = ProductionRepo(settings)
    model = get_installed(settings.cache_dir, spec)
    manifest = model.manifest
    repo.check_ready()
    reporter.stage(f"verifying the cached copy of {spec}")
    reporter.start(f"verify {spec}", manifest.total_size)
    try:
        # xxh3 here catches any corruption; the sha256 of every byte is checked on the copy below,
        # so a crafted xxh3 collision in the cache cannot reach production either.
        report: VerifyReport = verify_version_dir(model.path, manifest, progress=reporter.advance, check_sha256=False)
    finally:
        reporter.finish()
    if not report.ok:
        report.raise_for_problems()
    layout = repo.layout
    target = layout.version_dir(spec)
    with layout.lock(spec, wait=True):
        cleanup_stale_staging(layout)
        existing = repo.current(spec)
        old_digest = existing.digest if existing else ("invalid" if target.exists() else None)
        if existing is not None and existing.digest == manifest.digest:
            if not dry_run:
                repo.record("publish", spec, "unchanged", digest_old=old_digest, digest_new=manifest.digest,
                            source=str(model.path))
            return PublishResult(spec, target, "unchanged", manifest.digest, old_digest, manifest.total_size,
                                 len(manifest.files))
        if target.exists() and not force:
            raise AlreadyPublishedError(
                f"Version {str(spec)!r} is already published with different content "
                f"(published {old_digest}, cached {manifest.digest}).",
                hint=f"Versions are immutable; publish a new version, or replace it with: axon publish {spec} --force "
                "(the replaced copy is kept for: axon rollback)")
        if dry_run:
            return PublishResult(spec, target, "dry-run", manifest.digest, old_digest, manifest.total_size,
                                 len(manifest.files))
        staging = Path(tempfile.mkdtemp(prefix=f"{'--'.join(spec.parts)}.{os.getpid()}.", dir=layout.staging))
        try:
            reporter.stage(f"copying {len(manifest.files)} files into {repo.root}")
            for entry in manifest.files:
                (staging / entry.path).parent.mkdir(parents=True, exist_ok=True)
            pairs = [(model.path / e.path, staging / e.path) for e in manifest.files]
            pairs.append((model.path / MANIFEST_NAME, staging / MANIFEST_NAME))
            reporter.start(f"publish {spec}", manifest.total_size)
            try:
                results = copy_files(pairs, verify=True, durable=True, progress=reporter.advance)
            finally:
                reporter.finish()
            _check_copy(manifest, results)
            apply_published_modes(staging, gid)
            ensure_shared_dirs(repo.root, target.parent, gid)
            if before_rename is not None:
                before_rename(staging)
            history = None
            if target.exists():
                _make_movable(target)
                rename_exchange(staging, target)  # readers see the old or the new copy, never neither
                history = repo.history_dir(spec) / _stamp(old_digest)
                _shared_mkdir(history.parent)
                os.rename(staging, history)  # the replaced copy, kept for rollback
                fsync_dir(history.parent)
                status = "replaced"
            else:
                os.rename(staging, target)
                status = "published"
            os.chmod(target, 0o2555)
            fsync_dir(target.parent)
            fsync_dir(layout.staging)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                remove_tree(staging)
            if not isinstance(exc, KeyboardInterrupt):
                with contextlib.suppress(OSError):
                    repo.record("publish", spec, "failed", digest_old=old_digest, digest_new=manifest.digest,
                                source=str(model.path), message=str(exc)[:500])
            raise
        repo.record("publish", spec, "ok" if status == "published" else "replaced", digest_old=old_digest,
                    digest_new=manifest.digest, source=str(model.path))
    return PublishResult(spec, target, status, manifest.digest, old_digest, manifest.total_size, len(manifest.files),
                         time.perf_counter() - t0, history)


def _open_for_change(settings: Settings) -> ProductionRepo:
    """The production repository, once the caller is known to be allowed to change it."""
    require_publisher(settings.publish_group)
    repo = ProductionRepo(settings)
    repo.check_ready()
    return repo


def rollback(spec: ModelSpec, settings: Settings) -> PublishResult:
    """Restore the most recent replaced copy of *spec*; the current copy becomes history."""
    repo = _open_for_change(settings)
    target = repo.layout.version_dir(spec)
    with repo.layout.lock(spec, wait=True):
        entries = repo.history_entries(spec)
        if not entries:
            raise AxonError(f"There is no replaced or unpublished copy of {str(spec)!r} to roll back to.",
                            hint=f"See what happened with: axon audit {spec}")
        newest = entries[-1]
        restored = load_manifest(newest / MANIFEST_NAME)
        current = repo.current(spec)
        _make_movable(newest)
        if target.exists():
            _make_movable(target)
            rename_exchange(newest, target)
            os.rename(newest, repo.history_dir(spec) / _stamp(current.digest if current else None))
        else:
            ensure_shared_dirs(repo.root, target.parent, None)
            os.rename(newest, target)
        os.chmod(target, 0o2555)
        fsync_dir(target.parent)
        fsync_dir(repo.history_dir(spec))
        repo.record("rollback", spec, "ok", digest_old=current.digest if current else None,
                    digest_new=restored.digest, source=str(newest))
    return PublishResult(spec, target, "rolled-back", restored.digest, current.digest if current else None,
                         restored.total_size, len(restored.files))


def unpublish(spec: ModelSpec, settings: Settings, *, purge: bool = False) -> dict[str, Any]:
    """Move a published version into history (restorable by rollback), or delete it for good."""
    repo = _open_for_change(settings)
    target = repo.layout.version_dir(spec)
    with repo.layout.lock(spec, wait=True):
        current = repo.current(spec)
        if not target.exists():
            if purge and repo.history_entries(spec):
                for entry in repo.history_entries(spec):
                    remove_tree(entry)
                repo.record("purge", spec, "ok", message="history only")
                return {"spec": str(spec), "status": "purged", "path": str(target)}
            raise AxonError(f"Version {str(spec)!r} is not published in {str(repo.root)!r}.",
                            hint="List what is there with: axon published")
        digest = current.digest if current else None
        _make_movable(target)
        moved = repo.history_dir(spec) / _stamp(digest)
        _shared_mkdir(moved.parent)
        os.rename(target, moved)  # one atomic step: the version disappears whole
        fsync_dir(target.parent)
        if purge:
            for entry in repo.history_entries(spec):
                remove_tree(entry)
            repo.record("purge", spec, "ok", digest_old=digest)
            return {"spec": str(spec), "status": "purged", "path": str(target), "digest": digest}
        repo.record("unpublish", spec, "ok", digest_old=digest, source=str(moved))
        return {"spec": str(spec), "status": "unpublished", "path": str(target), "digest": digest,
                "history": str(moved), "restore": f"axon rollback {spec}"}


def published(settings: Settings) -> list[dict[str, Any]]:
    """Every version in the production repository with digest, size, publisher and time."""
    repo = ProductionRepo(settings)
    records, _ = repo.audit.read()
    last: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("result") in ("ok", "replaced") and rec.get("action") in ("publish", "rollback"):
            last[rec["spec"]] = rec
    out = []
    for entry in repo.layout.iter_versions():
        spec = str(entry.spec)
        row: dict[str, Any] = {"spec": spec, "path": str(entry.path)}
        try:
            m = load_manifest(entry.path / MANIFEST_NAME)
            row.update(digest=m.digest, size=m.total_size, files=len(m.files), valid=True)
        except AxonError as exc:
            row.update(digest=None, size=None, files=None, valid=False, problem=str(exc))
        rec = last.get(spec)
        if rec is not None and rec.get("digest_new") == row.get("digest"):
            row.update(publisher=rec.get("user"), published=rec.get("time"))
        else:
            st = entry.path.stat()
            row.update(publisher=_user_name(st.st_uid), published=time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)))
        out.append(row)
    return out


def verify_published(spec: ModelSpec, settings: Settings, *, progress: Callable[[int], object] | None = None
                     ) -> VerifyReport:
    repo = ProductionRepo(settings)
    target = repo.layout.version_dir(spec)
    if not (target / MANIFEST_NAME).is_file():
        raise AxonError(f"Version {str(spec)!r} is not published in {str(repo.root)!r}.",
                        hint="List what is there with: axon published")
    return verify_version_dir(target, load_manifest(target / MANIFEST_NAME), progress=progress)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

