"""A production repository in an S3-compatible object store (``publish_dir: s3://BUCKET/PREFIX``).

The same promises as a local repository, kept with the store's conditional writes instead of
renames (docs/operations.md, "Object storage"):

* **Nothing partial is visible.** A version's files are immutable, content-addressed objects
  ``<ns>/<name…>/<version>/<digest>/<path>`` (the digest is the manifest's integrity digest), each
  created only if absent. Its ``<ns>/<name…>/<version>/manifest.yaml`` is written last and is the
  commit point: readers ignore everything without one.
* **One winner.** A first publish creates the manifest only if absent; ``--force`` replaces it only
  if it is still the one read at the start (``If-Match``). The loser gets a ConflictError.
* **Replaced generations stay** (their objects are never deleted by a publish; the replaced
  manifest is copied, create-only, to ``.axon/history/<key>/``) for rollback.
* **An audit trail nobody rewrites**: one create-only object per event under ``.axon/audit/``.
* **Every byte verified where it is used**: the upload is hashed as it is read from the dev
  cache's checked files and compared with the manifest before the manifest is written; a reader
  hashes what it downloads. The store's own checksums are never trusted.

Who may publish is the store's access policy (docs/operations.md has a minimal one), not a Unix
group.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from axon.audit import AuditRecord
from axon.cached_version import CachedVersion, open_cached_version
from axon.crashpoints import crash_point
from axon.errors import AlreadyInstalledError, AxonError, ConflictError, IntegrityError, StoreError, UsageError
from axon.reporting import NullReporter, Reporter
from axon.repository import PublishResult
from axon.settings import Settings
from axon.store.integrity import Problem, VerifyReport, mismatch
from axon.store.layout import MANIFEST_NAME, version_key
from axon.store.manifest import FileEntry, Manifest, parse_manifest
from axon.store.object_cache import published_manifest
from axon.store.s3 import ObjectStore, S3Location, probe_conditional_writes
from axon.store.spec import ModelSpec, parse_spec

__all__ = ["REPOSITORY_RECORD", "ObjectRepository"]

REPOSITORY_RECORD = ".axon/repository.yaml"
HISTORY = ".axon/history/"
FORMAT = "axon.mlos.io/object-repository/v1"
UPLOADS_IN_FLIGHT = 4  # files at once (each large one also uploads its parts in parallel)


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:] + "Z"


class ObjectRepository:
    """The repository at *location*; every method talks to the store."""

    def __init__(self, location: S3Location, store: ObjectStore | None = None, *,
                 cache_dir: Path | None = None) -> None:
        self.location = location
        self.store = store if store is not None else ObjectStore(location)
        self.cache_dir = cache_dir  # the dev cache versions are published from

    @classmethod
    def of(cls, settings: Settings) -> ObjectRepository:
        assert settings.publish_store is not None, "called for an s3:// repository only"
        return cls(settings.publish_store, cache_dir=settings.cache_dir)

    # --- where things are ----------------------------------------------------------------

    @staticmethod
    def manifest_key(spec: ModelSpec) -> str:
        return f"{spec.relpath}/{MANIFEST_NAME}"

    @staticmethod
    def data_key(spec: ModelSpec, digest: str, path: str) -> str:
        return f"{spec.relpath}/{digest}/{path}"

    def url(self, spec: ModelSpec) -> str:
        return f"{self.location}/{spec.relpath}".replace("s3:///", "s3://")

    # --- set-up ----------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        """Check the store enforces conditional writes, then record the repository (once)."""
        probe_conditional_writes(self.store)
        record = yaml.safe_dump({"format": FORMAT, "created": _stamp()}, sort_keys=False).encode()
        try:
            self.store.put_if_absent(REPOSITORY_RECORD, record)
            created = True
        except ConflictError:
            created = False  # set up before: kept as it is
        return {"root": str(self.location), "created": created, "record": f"{self.location}/{REPOSITORY_RECORD}",
                "conditional_writes": "enforced"}

    def check_ready(self) -> None:
        if self.store.get(REPOSITORY_RECORD) is None:
            raise StoreError(f"{self.location} is not set up as a production repository.",
                             hint=f"Set it up once (it checks the store enforces conditional writes): "
                             f"axon setup-production --dir {self.location}")

    # --- reading ---------------------------------------------------------------------------

    def current(self, spec: ModelSpec) -> tuple[Manifest, bytes, str] | None:
        """(manifest, its bytes, its ETag) of *spec*'s published version, or None."""
        return published_manifest(self.store, spec)

    def published(self) -> list[dict[str, Any]]:
        """Every published version: spec, location, digest, size, files, publisher and time."""
        last: dict[str, dict[str, Any]] = {}
        for rec in self.audit()[0]:
            if rec.get("result") in ("ok", "replaced") and rec.get("action") in ("publish", "rollback"):
                last[str(rec.get("spec"))] = rec
        rows = []
        for key in self.store.list_keys():
            if not key.endswith("/" + MANIFEST_NAME) or key.startswith(".axon/"):
                continue
            try:
                spec = _spec_of(key)
            except AxonError:
                continue  # not a version's manifest (a stray object)
            row: dict[str, Any] = {"spec": str(spec), "path": self.url(spec)}
            try:
                found = self.current(spec)
            except AxonError as exc:
                row.update(digest=None, manifest_digest=None, size=None, files=None, valid=False, problem=str(exc))
            else:
                if found is None:
                    continue
                m = found[0]
                row.update(digest=m.digest, manifest_digest=m.manifest_digest, size=m.total_size, files=len(m.files),
                           valid=True)
            latest = last.get(str(spec))
            if latest is not None and latest.get("digest_new") == row.get("digest"):
                row.update(publisher=latest.get("user"), published=latest.get("time"))
            rows.append(row)
        return sorted(rows, key=lambda r: str(r["spec"]))

    def audit(self, spec: ModelSpec | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The audit events (of *spec*, or all), oldest first, and the ones that could not be read."""
        records, problems = [], []
        for key in self.store.list_keys(".axon/audit/"):
            found = self.store.get(key)
            if found is None:
                continue
            try:
                rec = json.loads(found[0])
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                problems.append(f"{key}: not a valid audit event ({exc})")
                continue
            if spec is None or rec.get("spec") == str(spec):
                records.append(rec)
        return records, problems

    def verify(self, spec: ModelSpec, *, progress: Any = None) -> VerifyReport:
        """Download every file of *spec*'s published version and check size, sha256 and xxh3-128."""
        found = self.current(spec)
        if found is None:
            raise AxonError(f"Version {str(spec)!r} is not published in {self.location}.",
                            hint="List what is there with: axon published")
        manifest = found[0]
        report = VerifyReport(manifest.spec_text, self.url(spec))
        report.published = True
        for entry in manifest.files:
            key = self.data_key(spec, manifest.digest, entry.path)
            if self.store.get_size(key) is None:
                report.problems.append(Problem(entry.path, "missing"))
                continue
            digest = self.store.download(key, lambda chunk: progress(len(chunk)) if progress else None,
                                         size=entry.size)
            report.files_checked += 1
            report.bytes_checked += digest.size
            if (problem := mismatch(entry, digest)) is not None:
                report.problems.append(problem)
        return report

    # --- writing ---------------------------------------------------------------------------

    def record(self, action: str, spec: ModelSpec, result: str, **kw: Any) -> None:
        rec = AuditRecord(action=action, spec=str(spec), result=result, **kw)
        fields = {k: v for k, v in asdict(rec).items() if v is not None}
        self.store.put_if_absent(f".axon/audit/{rec.time.replace(':', '')}-{uuid.uuid4().hex[:12]}.json",
                                 json.dumps(fields, sort_keys=True).encode())

    def publish(self, spec: ModelSpec, *, force: bool = False, dry_run: bool = False,
                reporter: Reporter | None = None) -> PublishResult:
        """Upload *spec* from the dev cache; the manifest last, conditionally."""
        t0 = time.perf_counter()
        reporter = reporter or NullReporter()
        self.check_ready()
        if self.cache_dir is None:
            raise UsageError("Publishing needs the dev cache this repository publishes from.",
                             hint="Open the repository with ObjectRepository.of(settings).")
        with open_cached_version(self.cache_dir, spec) as source:
            manifest = source.manifest
            found = self.current(spec)
            old_digest = found[0].digest if found else None

            def result(status: str, manifest_digest: str = manifest.manifest_digest) -> PublishResult:
                return PublishResult(spec, self.url(spec), status, manifest.digest, old_digest, manifest.total_size,
                                     len(manifest.files), time.perf_counter() - t0, manifest_digest=manifest_digest)

            if found is not None and found[0].digest == manifest.digest:
                return result("unchanged", found[0].manifest_digest)
            if found is not None and not force:
                raise AlreadyInstalledError(
                    f"{str(spec)!r} is already published in {self.location} with other content "
                    f"(published: {old_digest}, cached: {manifest.digest}).",
                    hint=f"Versions are immutable; publish a new version, or replace it with: axon publish {spec} "
                    "--force (the replaced copy is kept for: axon rollback)")
            if dry_run:
                return result("dry-run")
            status = "published"
            try:
                self._upload(spec, source, reporter)
                crash_point("s3-publish:after-data")
                if found is None:
                    self.store.put_if_absent(self.manifest_key(spec), source.manifest_bytes)
                else:
                    _, old_bytes, etag = found
                    self.store.put_if_absent(self._history_key(spec, old_digest), old_bytes)
                    crash_point("s3-publish:after-history")
                    self.store.replace_if(self.manifest_key(spec), source.manifest_bytes, etag)
                    status = "replaced"
                crash_point("s3-publish:after-manifest")
            except BaseException as exc:
                if not isinstance(exc, KeyboardInterrupt):
                    with contextlib.suppress(AxonError):
                        self.record("publish", spec, "failed", digest_old=old_digest, digest_new=manifest.digest,
                                    source=str(source.path), message=str(exc)[:500])
                raise
            self.record("publish", spec, "ok" if status == "published" else "replaced",
                        digest_old=old_digest, digest_new=manifest.digest, source=str(source.path))
            return result(status)

    def _history_key(self, spec: ModelSpec, digest: str | None) -> str:
        return f"{HISTORY}{version_key(spec)}/{_stamp()}-{digest or 'none'}.yaml"

    def history_entries(self, spec: ModelSpec) -> list[str]:
        """The replaced and unpublished manifests of *spec*, oldest first."""
        return sorted(self.store.list_keys(f"{HISTORY}{version_key(spec)}/"))

    def rollback(self, spec: ModelSpec) -> PublishResult:
        """Make the newest history manifest current again (the current one goes to history first),
        once every data object it names is still there with its size. A replace that loses a race
        (If-Match) changes nothing."""
        self.check_ready()
        entries = self.history_entries(spec)
        if not entries:
            raise AxonError(f"There is no replaced or unpublished copy of {str(spec)!r} to roll back to.",
                            hint=f"See what happened with: axon audit {spec}")
        found = self.store.get(entries[-1])
        if found is None:
            raise ConflictError(f"The history entry {entries[-1]!r} disappeared while rolling back.")
        restored_bytes = found[0]
        try:
            restored = parse_manifest(restored_bytes, f"{self.location}/{entries[-1]}")
        except AxonError as exc:
            raise IntegrityError(f"The history copy {entries[-1]!r} of {str(spec)!r} is not a valid manifest: "
                                 f"{exc.message}; nothing changed.") from None
        if restored.spec_text != str(spec):
            raise IntegrityError(f"The history copy {entries[-1]!r} says {restored.spec_text!r}; nothing changed.")
        for entry in restored.files:
            if self.store.get_size(self.data_key(spec, restored.digest, entry.path)) != entry.size:
                raise IntegrityError(f"The copy of {str(spec)!r} to roll back to is missing {entry.path!r} (or it "
                                     "has another size) in the store; nothing changed.", path=entry.path)
        current = self.current(spec)
        if current is None:
            self.store.put_if_absent(self.manifest_key(spec), restored_bytes)
        else:
            self.store.put_if_absent(self._history_key(spec, current[0].digest), current[1])
            self.store.replace_if(self.manifest_key(spec), restored_bytes, current[2])
        old = current[0].digest if current else None
        self.record("rollback", spec, "ok", digest_old=old, digest_new=restored.digest, source=entries[-1])
        return PublishResult(spec, self.url(spec), "rolled-back", restored.digest, old, restored.total_size,
                             len(restored.files), manifest_digest=restored.manifest_digest)

    def unpublish(self, spec: ModelSpec, *, purge: bool = False) -> dict[str, Any]:
        """Take *spec* out of the repository: its manifest goes to history (``rollback`` restores
        it), or with *purge* the manifest, the history and every data object are deleted."""
        self.check_ready()
        current = self.current(spec)
        history = self.history_entries(spec)
        if current is None and not (purge and history):
            raise AxonError(f"Version {str(spec)!r} is not published in {self.location}.",
                            hint="List what is there with: axon published")
        digest = current[0].digest if current else None
        result: dict[str, Any] = {"spec": str(spec), "path": self.url(spec), "digest": digest}
        if current is not None and not purge:
            moved = self._history_key(spec, digest)
            self.store.put_if_absent(moved, current[1])
            # the version disappears in this one step; a --force that landed since keeps its version
            self.store.delete_if(self.manifest_key(spec), current[2])
            self.record("unpublish", spec, "ok", digest_old=digest, source=moved)
            return {**result, "status": "unpublished", "history": f"{self.location}/{moved}",
                    "restore": f"axon rollback {spec}"}
        if current is not None:
            self.store.delete_if(self.manifest_key(spec), current[2])  # first: nobody sees a version lose files
        # Only this version's own objects: those under the digests its manifests name (a spec whose
        # path continues this one's, ns/a@b next to ns/a/b@c, keeps its objects).
        digests = {digest} if digest else set()
        for key in history:
            found = self.store.get(key)
            with contextlib.suppress(AxonError):
                if found is not None:
                    digests.add(parse_manifest(found[0], key).digest)
        for d in sorted(digests):
            for key in list(self.store.list_keys(f"{spec.relpath}/{d}/")):
                self.store.delete(key)
        for key in history:
            self.store.delete(key)
        self.record("purge", spec, "ok", digest_old=digest, message=None if current else "history only")
        return {**result, "status": "purged"}

    def _upload(self, spec: ModelSpec, source: CachedVersion, reporter: Reporter) -> None:
        """Every file to its content-addressed key, hashed as it is read; refused (IntegrityError,
        nothing committed) if what was read is not what the manifest says."""
        manifest = source.manifest
        reporter.start(f"publish {spec} to {self.location}", manifest.total_size)

        def one(entry: FileEntry) -> None:
            fd = source.open_file(entry)
            try:
                key = self.data_key(spec, manifest.digest, entry.path)
                try:
                    digest = self.store.upload_file(key, fd, entry.size, progress=reporter.advance)
                    crash_point("s3-publish:after-one-file")
                except ConflictError:
                    # Already there: an interrupted publish of this digest, or something planted.
                    # Only bytes that match the manifest may stay under a name it will commit to.
                    if mismatch(entry, self.store.download(key, lambda chunk: None, size=entry.size)):
                        raise IntegrityError(
                            f"An object is already at {self.location.key(key)!r} and does not match the manifest's "
                            f"{entry.path!r}; nothing was published.", path=entry.path,
                            hint="Delete that object (axon never writes one that does not match), then publish "
                            "again.") from None
                    reporter.advance(entry.size)
                    return
                if mismatch(entry, digest):
                    with contextlib.suppress(AxonError):  # ours, and wrong: never left under a name it claims
                        self.store.delete(key)
                    raise IntegrityError(
                        f"Integrity check failed for {str(spec)!r}: the upload of {entry.path!r} does not match the "
                        f"manifest (expected sha256 {entry.sha256}); nothing was published.", path=entry.path,
                        hint=f"Verify the cached copy (axon verify {spec}) and reinstall it if it is damaged.")
            finally:
                os.close(fd)

        try:
            with ThreadPoolExecutor(max_workers=UPLOADS_IN_FLIGHT, thread_name_prefix="axon-publish") as pool:
                for future in [pool.submit(one, e) for e in sorted(manifest.files, key=lambda e: -e.size)]:
                    future.result()
        finally:
            reporter.finish()


def _spec_of(manifest_key: str) -> ModelSpec:
    *path, version, _ = manifest_key.split("/")
    return parse_spec("/".join(path[:1]) + "/" + "/".join(path[1:]) + "@" + version)
