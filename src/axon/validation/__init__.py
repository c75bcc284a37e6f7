"""``axon test`` and ``axon validate``: checks on a cached model, and the report tied to its digest.

``validate`` composes one module per concern: :mod:`.functional` (what ``axon test`` runs),
:mod:`.performance`, :mod:`.accuracy`, :mod:`.resources` and :mod:`.compatibility`; :mod:`.report`
writes and reads the result. The report lives at ``<version>/.axon/validation.json`` (+
``validation.txt``): beside the package, outside its file list, so writing it never changes the
integrity digest.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from axon.cache import get_installed
from axon.reporting import NullReporter, Reporter
from axon.settings import Settings
from axon.store.spec import ModelSpec
from axon.validation.accuracy import accuracy_ok, check_accuracy
from axon.validation.compatibility import check_compatibility, is_compatible
from axon.validation.functional import Check, ModelRefusedError, SmokeTestResult, run_tests
from axon.validation.performance import measure_performance
from axon.validation.report import load_report, passing_report, summary, write_report
from axon.validation.resources import measure_resources, resident_bytes

__all__ = ["Check", "ModelRefusedError", "SmokeTestResult", "load_report", "passing_report", "run_tests",
           "summary", "validate"]


def validate(spec: ModelSpec, settings: Settings, *, reference: Path | str | None = None, device: str | None = None,
             batch_size: int = 8, seconds: float = 2.0, reporter: Reporter | None = None) -> dict[str, Any]:
    """Everything ``test`` does, then performance, accuracy, resources and compatibility.

    Returns the report (also written beside the cached version) with ``passed``.

    Raises:
        ModelRefusedError: the files are intact but the model cannot be loaded (the report,
            failed, is written first).
    """
    import onnxruntime as ort

    reporter = reporter or NullReporter()
    rss_before = resident_bytes()
    reporter.stage("functional checks")
    run = run_tests(spec, settings, device=device, raise_refused=False)
    cached = get_installed(settings.cache_dir, spec)
    vdir, manifest = cached.path, cached.manifest
    report: dict[str, Any] = {
        "spec": str(spec), "digest": manifest.digest, "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device or settings.device, "checks": [asdict(c) for c in run.checks],
        "onnxruntime": ort.__version__,
    }
    model = run.model
    if model is None or not run.ok:
        report.update(passed=False, provider=getattr(model, "provider", None))
        write_report(vdir, report)
        if run.refused is not None:
            raise ModelRefusedError(spec, run)
        return report
    report["provider"] = model.provider

    reporter.stage(f"performance: latency at batch 1, throughput at batch {batch_size}")
    report["performance"] = measure_performance(vdir, manifest, model, batch_size=batch_size, seconds=seconds)
    reporter.stage("accuracy against reference outputs")
    report["accuracy"] = check_accuracy(vdir, model, reference)
    report["resources"] = measure_resources(manifest, model.provider, rss_before)
    report["compatibility"] = check_compatibility(manifest, model.provider)
    report["passed"] = bool(run.ok and accuracy_ok(report["accuracy"]) and is_compatible(report["compatibility"]))
    write_report(vdir, report)
    return report
