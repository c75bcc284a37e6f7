"""A release: validation (when asked for) -> publish into production -> tell MLOS Core; and
``axon validate``'s publish on success (``auto_publish_on_validation``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axon.cache import get_installed
from axon.errors import AxonError
from axon.publish import publish
from axon.reporting import NullReporter, Reporter
from axon.repository import PublishResult
from axon.settings import Settings
from axon.store.spec import ModelSpec

__all__ = ["NOTIFIABLE_STATUSES", "ReleaseResult", "ValidationResult", "release", "validate_with_auto_publish"]

NOTIFIABLE_STATUSES = ("published", "replaced", "unchanged")  # a dry run put nothing in production


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    published: PublishResult
    notified: bool | None  # None: no notification was asked for (or a dry run); False: MLOS Core refused or was down


@dataclass(frozen=True, slots=True)
class ValidationResult:
    report: dict[str, Any]  # with "auto_published" when it published
    auto_published: str | None  # the publish status, when a passing validation published


def _require_passing_validation(spec: ModelSpec, settings: Settings, reporter: Reporter) -> None:
    from axon.validation import passing_report, validate

    cached = get_installed(settings.cache_dir, spec)
    if passing_report(cached.path, cached.manifest.digest) is not None:
        return
    reporter.stage(f"no passing validation for digest {cached.manifest.digest[:12]}: validating now")
    report = validate(spec, settings, reporter=reporter)
    if not report["passed"]:
        raise AxonError(f"Validation of {str(spec)!r} failed; not publishing.",
                        hint=f"See the report: axon validate {spec}")


def _notify_core(spec: ModelSpec, settings: Settings, reporter: Reporter) -> bool:
    from axon.core_client import CoreClient

    try:
        CoreClient(settings).register(spec)
    except Exception as exc:  # a failed notify is a warning, not a failed publish
        reporter.warn(f"could not notify MLOS Core: {str(exc).rstrip('.')}. Register later with: axon register {spec}")
        return False
    return True


def release(spec: ModelSpec, settings: Settings, *, require_validation: bool = False, notify: bool = False,
            force: bool = False, dry_run: bool = False, reporter: Reporter | None = None) -> ReleaseResult:
    """Publish *spec* (see :func:`axon.publish.publish`), first requiring a passing validation report
    for the cached content when *require_validation* (validating now when there is none), then,
    with *notify*, registering it with MLOS Core: a failed registration is a warning.

    Raises:
        AxonError: the validation failed (nothing published); whatever ``validate`` and
            ``publish`` raise.
    """
    reporter = reporter or NullReporter()
    if require_validation:
        _require_passing_validation(spec, settings, reporter)
    result = publish(spec, settings, force=force, dry_run=dry_run, reporter=reporter)
    notified = None
    if notify and result.status in NOTIFIABLE_STATUSES:
        notified = _notify_core(spec, settings, reporter)
    return ReleaseResult(result, notified)


def validate_with_auto_publish(spec: ModelSpec, settings: Settings, *, reference: Path | str | None = None,
                               device: str | None = None, batch_size: int = 8, seconds: float = 2.0,
                               reporter: Reporter | None = None) -> ValidationResult:
    """:func:`axon.validation.validate`, then, when it passed and ``auto_publish_on_validation`` is
    set, :func:`axon.publish.publish` (its status goes into the returned report as
    ``auto_published``; the stored report stays as validated)."""
    from axon.validation import validate

    reporter = reporter or NullReporter()
    report = validate(spec, settings, reference=reference, device=device, batch_size=batch_size, seconds=seconds,
                      reporter=reporter)
    published = None
    if report["passed"] and settings.auto_publish_on_validation:
        published = publish(spec, settings, reporter=reporter).status
        report["auto_published"] = published
    return ValidationResult(report, published)
