"""Promotion from the dev cache into the production repository, and its undo.

``publish`` runs, in order: permission check -> open the cached version without following any
symlink (``cached_version``) -> check the repository's state tree -> copy every listed file from
its open descriptor into a staging directory inside the production root (fast copy, hashed) ->
fsync -> compare the copy (sha256 + xxh3) with the manifest that was parsed, and write those same
manifest bytes -> group, read-only modes, setgid directories -> atomic rename (or exchange, with
``--force``) into ``<root>/<ns>/<name…>/<version>/`` -> fsync the parent -> audit record.
Every step can fail or be killed; at every instant each version under the root is either the
old complete copy or the new complete copy, and a replaced copy is never lost: until it is in
history, its staging directory's name says what it holds and the next run moves it there.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from axon.audit import AuditLog, AuditRecord
from axon.cached_version import CachedVersion, open_cached_version
from axon.crashpoints import crash_point
from axon.errors import AlreadyInstalledError, AxonError, IntegrityError, PermissionDeniedError, UsageError
from axon.permissions import (
    Caller,
    adopt_dir,
    apply_published_modes,
    caller,
    ensure_shared_dirs,
    make_dir,
    owner_name,
    require_publisher,
)
from axon.production import read_repository_group
from axon.publish_links import Linkable, find_linkable, unshare_owned
from axon.reporting import NullReporter, Reporter
from axon.repository import PublishResult, Repository
from axon.settings import Settings
from axon.store.atomic import atomic_write_bytes, fsync_dir, move_into_place, remove_tree
from axon.store.fastio import copy_files
from axon.store.integrity import Problem, VerifyReport, verify_version_dir
from axon.store.layout import MANIFEST_NAME, StoreLayout, version_key
from axon.store.manifest import FileEntry, Manifest, load_manifest, read_version_manifest
from axon.store.modes import DIR_MODE, HISTORY_KEY_MODE, SHARED_DIR_MODE
from axon.store.nofollow import fd_path, open_dir, read_regular
from axon.store.spec import ModelSpec, parse_spec

__all__ = [
    "AlreadyPublishedError",
    "LocalRepository",
    "ProductionRepo",
    "PublishResult",
    "audit_records",
    "open_repository",
    "publish",
    "published",
    "rollback",
    "unpublish",
    "verify_published",
]


class AlreadyPublishedError(AlreadyInstalledError):
    """The version is published with other content and --force was not given."""


class ProductionRepo:
    """The production root: versions, axon's state dir, history and audit log."""

    def __init__(self, settings: Settings) -> None:
        if settings.publish_store is not None:
            raise UsageError(f"This command does not work on an object-store repository ({settings.publish_store}) "
                             "yet: setup-production, publish, unpublish, rollback, published, audit and verify "
                             "--published do.",
                             hint="docs/operations.md, \"Object storage\", says what is there so far.")
        self.settings = settings
        self.root = settings.publish_dir
        self.layout = StoreLayout(self.root)
        self.audit = AuditLog(self.layout.internal / "audit.log")
        self._group: str | None = None

    @property
    def group(self) -> str:
        """The repository's group: the one setup-production recorded, else the configured one."""
        if self._group is None:
            self._group = (read_repository_group(self.root) if self.root.is_dir() else None) \
                or self.settings.publish_group
        return self._group

    @property
    def history(self) -> Path:
        return self.layout.internal / "history"

    def history_dir(self, spec: ModelSpec) -> Path:
        return self.history / version_key(spec)

    def history_entries(self, spec: ModelSpec, trusted: set[int] | None = None) -> list[Path]:
        """Replaced copies of *spec*, oldest first (names start with a sortable UTC time); with
        *trusted*, only real directories owned by one of those uids (anything else was planted)."""
        d = self.history_dir(spec)
        try:
            names = sorted(os.listdir(d)) if stat.S_ISDIR(os.lstat(d).st_mode) else []
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.startswith("."):
                continue
            st = os.lstat(d / name)
            if stat.S_ISDIR(st.st_mode) and (trusted is None or st.st_uid in trusted):
                out.append(d / name)
        return out

    def check_ready(self, who: Caller) -> None:
        """The repository exists, the caller can write to it, and its state directory is sound.

        Refuses a state tree that a member could have planted or could still rename, so that
        what root opens under ``.axon/`` is what setup-production made."""
        hint = f"sudo axon setup-production --dir {self.root} --group {self.group}"
        if not self.root.is_dir():
            raise AxonError(f"The production repository {str(self.root)!r} does not exist.",
                            hint=f"An administrator creates it once with: {hint}")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionDeniedError(f"Cannot write to the production repository {str(self.root)!r}.",
                                        hint=f"It should be group {self.group!r} with mode 3775: {hint}")
        root_st = os.stat(self.root)
        _require_sticky_if_shared(self.root, root_st, hint)
        internal = self.layout.internal
        try:
            st = os.lstat(internal)
        except FileNotFoundError:
            if not (who.is_root or who.uid == root_st.st_uid):
                raise AxonError(f"The production repository {str(self.root)!r} has no state directory .axon/.",
                                hint=f"An administrator creates it: {hint}") from None
            os.mkdir(internal, 0o755)
            st = os.lstat(internal)
        trusted = {0, root_st.st_uid}
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in trusted:
            raise PermissionDeniedError(
                f"The state directory {str(internal)!r} is "
                + ("not a directory" if not stat.S_ISDIR(st.st_mode) else f"owned by {owner_name(st.st_uid)!r}")
                + "; refusing to trust it.", hint=f"An administrator repairs the repository: {hint}")
        _require_sticky_if_shared(internal, st, hint)
        for d in (self.layout.staging, self.layout.locks, self.history):
            try:
                dst = os.lstat(d)
            except FileNotFoundError:
                if st.st_uid != who.uid and not who.is_root:
                    raise PermissionDeniedError(f"{str(d)!r} is missing.",
                                                hint=f"An administrator repairs it: {hint}") from None
                make_dir(d, SHARED_DIR_MODE)
                continue
            if not stat.S_ISDIR(dst.st_mode) or dst.st_uid not in trusted:
                raise PermissionDeniedError(f"{str(d)!r} is not a directory of the repository's owner; refusing it.",
                                            hint=f"An administrator repairs the repository: {hint}")
            _require_sticky_if_shared(d, dst, hint)

    def current(self, spec: ModelSpec) -> Manifest | None:
        return read_version_manifest(self.layout, spec)

    def record(self, action: str, spec: ModelSpec, result: str, **kw: Any) -> None:
        self.audit.append(AuditRecord(action=action, spec=str(spec), result=result, **kw))

    def history_dir_for(self, spec: ModelSpec, who: Caller, gid: int | None) -> tuple[Path, int]:
        """Create or check the history directory of *spec*; returns it and its owner before this call.

        It belongs to the version's first publisher (or root): only they move copies in and out,
        so nobody else can plant a copy that a later rollback would restore."""
        d = self.history_dir(spec)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            make_dir(d, HISTORY_KEY_MODE, gid)
            return d, who.uid
        if not stat.S_ISDIR(st.st_mode):
            raise PermissionDeniedError(f"History of {str(spec)!r} at {str(d)!r} is not a directory; refusing it.",
                                        hint=f"An administrator removes it: sudo rm {d}")
        if st.st_uid != who.uid:
            if not who.is_root:
                raise PermissionDeniedError(
                    f"The history of {str(spec)!r} belongs to {owner_name(st.st_uid)!r}: only they or root may "
                    "publish, replace, unpublish or roll back this version.",
                    hint="Publish a new version instead, or ask an administrator (sudo).")
            adopt_dir(d, gid, HISTORY_KEY_MODE)
        return d, st.st_uid

    def recover_staging(self, staging: Path, replaced_digest: str, who: Caller, gid: int | None) -> bool:
        """A stale staging directory of an interrupted --force: if it holds the replaced copy
        (its manifest has the digest named in its name), move it into history instead of deleting it.

        Only a directory that can be what a killed --force left behind is moved: a real directory
        named after the spec its manifest names (a valid spec), owned by root or by the owner of
        that version's existing history. Anything else in staging is deleted like any leftover."""
        try:
            st = os.lstat(staging)
            m = load_manifest(staging / MANIFEST_NAME)
            spec = parse_spec(f"{m.namespace}/{m.name}@{m.version}")
        except (OSError, AxonError):
            return False  # the new copy, incomplete (or junk): safe to delete
        if m.digest != replaced_digest or not stat.S_ISDIR(st.st_mode):
            return False  # the new copy, complete but never swapped in
        if not staging.name.startswith(version_key(spec) + "."):
            return False
        hist = self.history_dir(spec)
        try:
            hst = os.lstat(hist)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(hst.st_mode) or st.st_uid not in (0, hst.st_uid):
            return False
        if hst.st_uid != who.uid and not who.is_root:
            return True  # not ours to move: the history's owner (or root) will
        dest = hist / _stamp(m.digest)
        if who.is_root and st.st_uid != 0:
            apply_published_modes(staging, gid)
        os.rename(staging, dest)
        fsync_dir(hist)
        self.record("recover", spec, "ok", digest_old=m.digest, source=str(dest),
                    message="replaced copy of an interrupted --force moved into history")
        return True

    def cleanup_staging(self, who: Caller, gid: int | None) -> None:
        self.layout.cleanup_stale_staging(recover=lambda path, digest: self.recover_staging(path, digest, who, gid))


def _require_sticky_if_shared(path: Path, st: os.stat_result, hint: str) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise PermissionDeniedError(
            f"{str(path)!r} lets other users rename anything in it (mode {mode:o}, no sticky bit); refusing to use it.",
            hint=f"An administrator applies the permission model once: {hint}")


def _stamp(digest: str | None) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:] + f"-{(digest or 'none')[:12]}"


def _make_movable(path: Path) -> None:
    """Moving a directory to another parent needs write permission on it (to update '..')."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDeniedError(f"{str(path)!r} is not a directory; refusing to move it.")
    if os.geteuid() == 0:
        return
    if st.st_uid != os.geteuid():
        raise PermissionDeniedError(
            f"Version directory {str(path)!r} belongs to {owner_name(st.st_uid)!r}; only its publisher or root can "
            "move it.", hint="Run the command as root (sudo) or as the user who published that version.")
    with open_dir(path) as fd:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o200)


def _version_present(target: Path) -> bool:
    """Whether a version directory is there; anything else in its place (a symlink planted by the
    owner of a namespace directory) is refused, never followed."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise PermissionDeniedError(f"{str(target)!r} is {what}, not a version directory; refusing to touch it.",
                                    hint=f"An administrator removes it: sudo rm {target}")
    return True


def _require_owner(path: Path, who: Caller) -> int:
    """The owner of version directory *path*, which the caller must be (or root)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDeniedError(f"{str(path)!r} is not a directory; refusing to touch it.",
                                    hint=f"An administrator removes it: sudo rm {path}")
    if not who.is_root and st.st_uid != who.uid:
        raise PermissionDeniedError(
            f"Version directory {str(path)!r} belongs to {owner_name(st.st_uid)!r}; only its publisher or root can "
            "replace, unpublish or roll it back.",
            hint="Run the command as root (sudo) or as the user who published that version.")
    return st.st_uid


def _take_over(version_dir: Path, gid: int | None, owner: int) -> None:
    """Root makes a member's version its own: the files the member shares with another of their
    versions get their own copies first, so that the chown changes nothing of the other's."""
    unshare_owned(version_dir, owner)
    apply_published_modes(version_dir, gid, uid=0)


def _seal(path: Path) -> None:
    with open_dir(path) as fd:
        os.fchmod(fd, DIR_MODE)
        os.fsync(fd)  # the mode is the version's seal: durable before the command reports success


def _same_directory(path: Path, was: os.stat_result) -> bool:
    """Whether *path* is still the directory *was* describes (not moved away, not exchanged)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (was.st_dev, was.st_ino)


def _check_copy(spec: ModelSpec, entries: list[FileEntry], results: list[Any]) -> None:
    for entry, got in zip(entries, results, strict=True):
        if got.size != entry.size or got.sha256 != entry.sha256 or got.xxh3_128 != entry.xxh3_128:
            # No digest of what was read: the caller may not have been able to read that file.
            raise IntegrityError(
                f"Integrity check failed for {str(spec)!r}: the copy of {entry.path!r} does not match the manifest "
                f"(expected sha256 {entry.sha256}); nothing was published.",
                path=entry.path, expected=entry.sha256,
                hint=f"Verify the cached copy (axon verify {spec}) and reinstall it if it is damaged.")


def _copy_into_staging(source: CachedVersion, staging: Path, reporter: Reporter, links: Linkable) -> int:
    """Every listed file into *staging*: linked when another published version of the model holds
    the same bytes (*links*), else copied from the cache and checked; returns the bytes linked."""
    manifest = source.manifest
    for entry in manifest.files:
        (staging / entry.path).parent.mkdir(parents=True, exist_ok=True)
    linked = [e for e in manifest.files if e.path in links.paths]
    for entry in linked:
        links.link_into(staging, entry)
    crash_point("publish:after-links")
    to_copy = [e for e in manifest.files if e.path not in links.paths]
    fds: list[int] = []
    try:
        for entry in to_copy:
            fds.append(source.open_file(entry))
        pairs: list[tuple[str | os.PathLike[str], str | os.PathLike[str]]] = [
            (fd_path(fd), staging / e.path) for fd, e in zip(fds, to_copy, strict=True)]
        reporter.start(f"publish {source.spec}", sum(e.size for e in to_copy))
        try:
            results = copy_files(pairs, verify=True, durable=True, progress=reporter.advance) if pairs else []
        finally:
            reporter.finish()
    finally:
        for fd in fds:
            os.close(fd)
    _check_copy(source.spec, to_copy, results)
    check_model_references(staging, manifest)
    atomic_write_bytes(staging / MANIFEST_NAME, source.manifest_bytes, mode=0o444)  # exactly what was parsed
    return sum(e.size for e in linked)


def check_model_references(version_dir: Path, manifest: Manifest) -> None:
    """Every external-data location anywhere in the (verified) entrypoint names a listed file of
    the package: nothing outside the version can be pulled in by the graph (exit 2 if not)."""
    from axon.model.onnx_signature import check_external_data

    data, _ = read_regular(os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), manifest.entrypoint,
                           limit=1 << 31, close_dir=True)
    check_external_data(data, manifest.entrypoint, {f.path for f in manifest.files})


def open_repository(settings: Settings) -> Repository:
    """The production repository *settings* name: a directory, or an s3:// object store."""
    if settings.publish_store is not None:
        from axon.object_repository import ObjectRepository

        return ObjectRepository.of(settings)
    return LocalRepository(settings)


def publish(spec: ModelSpec, settings: Settings, *, force: bool = False, dry_run: bool = False,
            reporter: Reporter | None = None, before_rename: Callable[[Path], None] | None = None) -> PublishResult:
    """Promote *spec* from the dev cache into the production repository.

    Raises:
        PermissionDeniedError (4), NotInstalledError (1), IntegrityError (3),
        AlreadyPublishedError (1, without --force), DiskFullError (1).
    """
    if before_rename is not None:  # a test's hook into the local rename
        return LocalRepository(settings).publish(spec, force=force, dry_run=dry_run, reporter=reporter,
                                                 before_rename=before_rename)
    return open_repository(settings).publish(spec, force=force, dry_run=dry_run, reporter=reporter)


def rollback(spec: ModelSpec, settings: Settings) -> PublishResult:
    """Restore the most recent replaced copy of *spec*; the current copy becomes history."""
    return open_repository(settings).rollback(spec)


def unpublish(spec: ModelSpec, settings: Settings, *, purge: bool = False) -> dict[str, Any]:
    """Move a published version into history (restorable by rollback), or delete it for good."""
    return open_repository(settings).unpublish(spec, purge=purge)


def published(settings: Settings) -> list[dict[str, Any]]:
    """Every version in the production repository with digest, size, publisher and time."""
    return open_repository(settings).published()


def audit_records(settings: Settings, spec: ModelSpec | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The production audit log's records (of *spec*, or all), oldest first, and the problems met
    reading it (unparsable lines, receipts that do not match), each described in one line."""
    return open_repository(settings).audit(spec)


def verify_published(spec: ModelSpec, settings: Settings, *, progress: Callable[[int], object] | None = None
                     ) -> VerifyReport:
    return open_repository(settings).verify(spec, progress=progress)


class LocalRepository:
    """A production repository in a directory (``publish_dir``, default ``/var/lib/mlos/models``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def publish(self, spec: ModelSpec, *, force: bool = False, dry_run: bool = False,
                reporter: Reporter | None = None, before_rename: Callable[[Path], None] | None = None
                ) -> PublishResult:
        t0 = time.perf_counter()
        who = caller()
        repo = ProductionRepo(self.settings)
        gid = require_publisher(repo.group, who)
        with open_cached_version(self.settings.cache_dir, spec) as source:
            return _publish(spec, repo, source, who, gid, force=force, dry_run=dry_run,
                            reporter=reporter or NullReporter(), before_rename=before_rename, t0=t0)

    def rollback(self, spec: ModelSpec) -> PublishResult:
        return _rollback(spec, self.settings)

    def unpublish(self, spec: ModelSpec, *, purge: bool = False) -> dict[str, Any]:
        return _unpublish(spec, self.settings, purge=purge)

    def published(self) -> list[dict[str, Any]]:
        return _published(self.settings)

    def audit(self, spec: ModelSpec | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        return ProductionRepo(self.settings).audit.read(str(spec) if spec is not None else None)

    def verify(self, spec: ModelSpec, *, progress: Callable[[int], object] | None = None) -> VerifyReport:
        return _verify_published(spec, self.settings, progress=progress)


def _publish(spec: ModelSpec, repo: ProductionRepo, source: CachedVersion, who: Caller, gid: int | None, *,
             force: bool, dry_run: bool, reporter: Reporter, before_rename: Callable[[Path], None] | None,
             t0: float) -> PublishResult:
    manifest = source.manifest
    repo.check_ready(who)
    layout = repo.layout
    target = layout.version_dir(spec)
    with layout.lock(spec, wait=True):
        repo.cleanup_staging(who, gid)
        exists = _version_present(target)
        existing = repo.current(spec) if exists else None
        old_digest = existing.digest if existing else ("invalid" if exists else None)
        if existing is not None and existing.digest == manifest.digest:
            if not dry_run:
                repo.record("publish", spec, "unchanged", digest_old=old_digest, digest_new=manifest.digest,
                            source=str(source.path))
            return PublishResult(spec, target, "unchanged", manifest.digest, old_digest, manifest.total_size,
                                 len(manifest.files), manifest_digest=existing.manifest_digest)
        if exists and not force:
            raise AlreadyPublishedError(
                f"Version {str(spec)!r} is already published with different content "
                f"(published {old_digest}, cached {manifest.digest}).",
                hint=f"Versions are immutable; publish a new version, or replace it with: axon publish {spec} --force "
                "(the replaced copy is kept for: axon rollback)")
        target_owner = _require_owner(target, who) if exists else None
        ensure_shared_dirs(repo.root, target.parent, gid, who)
        if dry_run:
            return PublishResult(spec, target, "dry-run", manifest.digest, old_digest, manifest.total_size,
                                 len(manifest.files), manifest_digest=manifest.manifest_digest)
        history_dir, _ = repo.history_dir_for(spec, who, gid)
        replaces = existing.digest if (exists and existing is not None) else None
        staging = layout.new_staging(spec, replaces=replaces)
        new_copy = os.lstat(staging)  # after an exchange the name staging holds the replaced copy instead
        try:
            with find_linkable(target, spec, manifest, gid) as links:
                reporter.stage(f"copying {len(manifest.files) - len(links.paths)} files into {repo.root}"
                               + (f", linking {len(links.paths)} that other published versions hold"
                                  if links.paths else ""))
                bytes_linked = _copy_into_staging(source, staging, reporter, links)
            apply_published_modes(staging, gid)
            crash_point("publish:before-rename")
            if before_rename is not None:
                before_rename(staging)
            history = None
            if exists:
                if who.is_root and target_owner is not None and target_owner != 0:
                    _take_over(target, gid, target_owner)  # root takes the copy it replaces over
                _make_movable(target)
                move_into_place(staging, target, replace=True)
                crash_point("publish:after-exchange")
                history = history_dir / _stamp(old_digest)
                os.rename(staging, history)  # the replaced copy, kept for rollback
                crash_point("publish:after-history")
                fsync_dir(history_dir)
                status = "replaced"
            else:
                move_into_place(staging, target, replace=False)
                status = "published"
            _seal(target)
            fsync_dir(layout.staging)
        except BaseException as exc:
            if _same_directory(staging, new_copy):  # the replaced copy (after the exchange) is recovery's to keep
                with contextlib.suppress(OSError):
                    remove_tree(staging)
            if not isinstance(exc, KeyboardInterrupt):
                with contextlib.suppress(OSError, AxonError):
                    repo.record("publish", spec, "failed", digest_old=old_digest, digest_new=manifest.digest,
                                source=str(source.path), message=str(exc)[:500])
            raise
        bytes_copied = manifest.total_size - bytes_linked
        repo.record("publish", spec, "ok" if status == "published" else "replaced", digest_old=old_digest,
                    digest_new=manifest.digest, source=str(source.path), bytes_copied=bytes_copied,
                    bytes_linked=bytes_linked)
    return PublishResult(spec, target, status, manifest.digest, old_digest, manifest.total_size, len(manifest.files),
                         time.perf_counter() - t0, history, manifest_digest=manifest.manifest_digest,
                         bytes_copied=bytes_copied, bytes_linked=bytes_linked)


def _open_for_change(settings: Settings) -> tuple[ProductionRepo, Caller, int | None]:
    """The production repository, once the caller is known to be allowed to change it."""
    who = caller()
    repo = ProductionRepo(settings)
    gid = require_publisher(repo.group, who)
    repo.check_ready(who)
    return repo, who, gid


def _verified_history_copy(repo: ProductionRepo, spec: ModelSpec, entry: Path, who: Caller,
                           gid: int | None) -> Manifest:
    """Re-apply ownership and modes to a history copy, then check it completely (exit 3 if not)."""
    def refuse(why: str) -> IntegrityError:
        return IntegrityError(f"The history copy {str(entry)!r} of {str(spec)!r} {why}; nothing was changed.",
                              path=str(entry), hint=f"Inspect it, or purge it: axon unpublish {spec} --purge --yes")

    try:
        # Root keeps a member's copy theirs (restoring it must not launder it into a root-owned
        # version); a root-owned copy stays root's.
        apply_published_modes(entry, gid, uid=0 if who.is_root and os.lstat(entry).st_uid == 0 else None)
    except OSError as exc:
        raise refuse(f"holds something that is not a regular file or directory ({exc.filename}: {exc.strerror})") \
            from None
    try:
        restored = load_manifest(entry / MANIFEST_NAME)
    except AxonError as exc:
        raise refuse(f"has no valid manifest ({exc})") from None
    if (restored.namespace, restored.name, restored.version) != (spec.namespace, spec.name, spec.version):
        raise refuse(f"is a copy of {restored.spec_text!r}")
    report = verify_version_dir(entry, restored)
    if not report.ok:
        raise refuse(f"does not match its manifest ({report.problems[0].describe()})")
    check_model_references(entry, restored)
    return restored


def _rollback(spec: ModelSpec, settings: Settings) -> PublishResult:
    """The local rollback: the copy is re-owned, made read-only and verified (sha256 of every
    file) before it is swapped in; a tampered copy is refused (IntegrityError, exit 3) and
    nothing changes."""
    repo, who, gid = _open_for_change(settings)
    target = repo.layout.version_dir(spec)
    with repo.layout.lock(spec, wait=True):
        repo.cleanup_staging(who, gid)
        ensure_shared_dirs(repo.root, target.parent, gid, who)  # no member-owned directory on the way
        exists = _version_present(target)
        target_owner = _require_owner(target, who) if exists else None
        if not repo.history_entries(spec):
            raise AxonError(f"There is no replaced or unpublished copy of {str(spec)!r} to roll back to.",
                            hint=f"See what happened with: axon audit {spec}")
        history_dir, history_owner = repo.history_dir_for(spec, who, gid)
        # Copies count only when moved there by the history's owner (the version's publisher) or
        # root; a root-owned (or someone else's) live version trusts root's copies only.
        trusted = {0, history_owner} if target_owner in (None, history_owner) else {0}
        entries = repo.history_entries(spec, trusted)
        if not entries:
            raise AxonError(f"There is no replaced or unpublished copy of {str(spec)!r} to roll back to "
                            "(copies not moved there by its publisher or root are ignored).",
                            hint=f"See what happened with: axon audit {spec}")
        newest = entries[-1]
        restored = _verified_history_copy(repo, spec, newest, who, gid)
        current = repo.current(spec)
        moved_to = None
        if exists:
            if who.is_root and target_owner is not None and target_owner != 0:
                _take_over(target, gid, target_owner)
            _make_movable(target)
            move_into_place(newest, target, replace=True)
            crash_point("rollback:after-exchange")
            moved_to = history_dir / _stamp(current.digest if current else None)
            os.rename(newest, moved_to)
        else:
            ensure_shared_dirs(repo.root, target.parent, gid, who)
            move_into_place(newest, target, replace=False)
        _seal(target)
        fsync_dir(history_dir)
        repo.record("rollback", spec, "ok", digest_old=current.digest if current else None,
                    digest_new=restored.digest, source=str(newest))
    return PublishResult(spec, target, "rolled-back", restored.digest, current.digest if current else None,
                         restored.total_size, len(restored.files), history=moved_to,
                         manifest_digest=restored.manifest_digest)


def _unpublish(spec: ModelSpec, settings: Settings, *, purge: bool = False) -> dict[str, Any]:
    repo, who, gid = _open_for_change(settings)
    target = repo.layout.version_dir(spec)
    with repo.layout.lock(spec, wait=True):
        repo.cleanup_staging(who, gid)
        ensure_shared_dirs(repo.root, target.parent, gid, who, create=False)
        present = _version_present(target)
        current = repo.current(spec) if present else None
        if not present:
            if purge and repo.history_entries(spec):
                repo.history_dir_for(spec, who, gid)
                for entry in repo.history_entries(spec):
                    remove_tree(entry)
                repo.record("purge", spec, "ok", message="history only")
                return {"spec": str(spec), "status": "purged", "path": str(target)}
            raise AxonError(f"Version {str(spec)!r} is not published in {str(repo.root)!r}.",
                            hint="List what is there with: axon published")
        target_owner = _require_owner(target, who)
        history_dir, _ = repo.history_dir_for(spec, who, gid)
        digest = current.digest if current else None
        if who.is_root and target_owner != 0:
            _take_over(target, gid, target_owner)
        _make_movable(target)
        moved = history_dir / _stamp(digest)
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


def _published(settings: Settings) -> list[dict[str, Any]]:
    repo = ProductionRepo(settings)
    records, _ = repo.audit.read()
    last: dict[str, dict[str, Any]] = {}
    attesting = repo.audit.receipts.is_dir()
    for rec in records:
        if attesting and not rec.get("attested"):
            continue  # a claim nobody can vouch for does not name a publisher
        if rec.get("result") in ("ok", "replaced") and rec.get("action") in ("publish", "rollback"):
            last[rec["spec"]] = rec
    out = []
    for entry in repo.layout.iter_versions():
        spec = str(entry.spec)
        row: dict[str, Any] = {"spec": spec, "path": str(entry.path)}
        try:
            m = load_manifest(entry.path / MANIFEST_NAME)
            row.update(digest=m.digest, manifest_digest=m.manifest_digest, size=m.total_size, files=len(m.files),
                       valid=True)
        except AxonError as exc:
            row.update(digest=None, manifest_digest=None, size=None, files=None, valid=False, problem=str(exc))
        latest = last.get(spec)
        if latest is not None and latest.get("digest_new") == row.get("digest"):
            row.update(publisher=latest.get("user"), published=latest.get("time"))
        else:
            st = entry.path.stat()
            row.update(publisher=owner_name(st.st_uid), published=time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)))
        out.append(row)
    return out


def _verify_published(spec: ModelSpec, settings: Settings, *, progress: Callable[[int], object] | None = None
                      ) -> VerifyReport:
    repo = ProductionRepo(settings)
    target = repo.layout.version_dir(spec)
    if not (target / MANIFEST_NAME).is_file():
        raise AxonError(f"Version {str(spec)!r} is not published in {str(repo.root)!r}.",
                        hint="List what is there with: axon published")
    manifest = load_manifest(target / MANIFEST_NAME)
    report = verify_version_dir(target, manifest, progress=progress)
    report.published = True
    recorded = _recorded_digest(repo, spec, {0, os.lstat(target).st_uid})
    if recorded is not None and recorded != manifest.digest:
        # Files and manifest agree, but not with what the last publish recorded: changed in place.
        report.problems.append(Problem(MANIFEST_NAME, "unrecorded", recorded, manifest.digest))
    return report


def _recorded_digest(repo: ProductionRepo, spec: ModelSpec, writers: set[int]) -> str | None:
    """The digest the last (attested, where receipts exist) publish or rollback of *spec* by one of
    *writers* (root and the version's owner: nobody else can change it) put in place."""
    records, _ = repo.audit.read(str(spec))
    attesting = repo.audit.receipts.is_dir()
    digest = None
    for rec in records:
        if attesting and (not rec.get("attested") or rec.get("uid") not in writers):
            continue
        if rec.get("action") in ("publish", "rollback", "recover") and rec.get("result") in ("ok", "replaced"):
            digest = rec.get("digest_new") if rec.get("action") != "recover" else digest
        elif rec.get("action") in ("unpublish", "purge") and rec.get("result") == "ok":
            digest = None
    return digest

