"""The production repository as one small interface, whatever holds it.

Two kinds implement :class:`Repository`, and ``publish.open_repository(settings)`` picks one
from ``publish_dir``:

* ``publish.LocalRepository``: a directory (``/var/lib/mlos/models``): staging, fsync and
  ``rename``/``RENAME_EXCHANGE``, the publish group's permissions, an append-only audit log with
  kernel receipts;
* ``object_repository.ObjectRepository``: an S3-compatible store (``s3://BUCKET/PREFIX``):
  content-addressed objects, the manifest written last with ``If-None-Match``/``If-Match``, one
  create-only object per audit event.

Both keep the same promises: nothing partial is ever visible, replaced versions stay for
rollback, every byte is verified against the manifest where it is used. Serving needs no such
interface: MLOS Core reads a directory, and an object store becomes one through the verified
local cache (``axon.store.object_cache``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from axon.reporting import Reporter
from axon.store.integrity import VerifyReport
from axon.store.spec import ModelSpec

__all__ = ["PublishResult", "Repository"]


@dataclass(frozen=True, slots=True)
class PublishResult:
    spec: ModelSpec
    path: Path | str  # a version directory, or an s3:// URL
    status: str  # published | replaced | unchanged | dry-run | rolled-back
    digest: str
    digest_old: str | None = None
    size: int = 0
    files: int = 0
    seconds: float = 0.0
    history: Path | None = None
    manifest_digest: str = ""  # of the manifest now published (what `axon register --digest` pins)
    bytes_copied: int | None = None  # what a publish wrote anew ...
    bytes_linked: int | None = None  # ... and what it shares with the model's other published versions


class Repository(Protocol):
    """What ``axon publish``, ``unpublish``, ``rollback``, ``published``, ``audit`` and
    ``verify --published`` need from a production repository."""

    def publish(self, spec: ModelSpec, *, force: bool = False, dry_run: bool = False,
                reporter: Reporter | None = None) -> PublishResult:
        """Promote *spec* from the dev cache: verified, atomic, audited; different content needs *force*."""
        ...

    def rollback(self, spec: ModelSpec) -> PublishResult:
        """Make the newest replaced or unpublished copy current again (the current one goes to history)."""
        ...

    def unpublish(self, spec: ModelSpec, *, purge: bool = False) -> dict[str, Any]:
        """Take *spec* out (restorable by rollback), or with *purge* delete it and its history."""
        ...

    def published(self) -> list[dict[str, Any]]:
        """Every published version: spec, path, digest, manifest_digest, size, files, publisher, time."""
        ...

    def audit(self, spec: ModelSpec | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The audit records (of *spec*, or all), oldest first, and the problems met reading them."""
        ...

    def verify(self, spec: ModelSpec, *, progress: Callable[[int], object] | None = None) -> VerifyReport:
        """Re-hash every file of the published *spec* against its manifest."""
        ...
