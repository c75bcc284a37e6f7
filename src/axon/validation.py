"""``axon test`` and ``axon validate``: checks on a cached model, and the report tied to its digest.

The report lives at ``<version>/.axon/validation.json`` (+ ``validation.txt``): beside the
package, outside its file list, so writing it never changes the integrity digest.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from axon.cache import get_installed
from axon.errors import AxonError, InvalidModelError
from axon.reporting import NullReporter, Reporter
from axon.settings import Settings
from axon.store.atomic import atomic_write_text
from axon.store.integrity import verify_version_dir
from axon.store.manifest import Manifest
from axon.store.spec import ModelSpec

__all__ = ["Check", "ModelRefusedError", "load_report", "passing_report", "run_tests", "validate"]

REFERENCE_PATHS = ("samples/reference.json", "reference.json")
SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class TestRun:
    checks: list[Check] = field(default_factory=list)
    model: Any = None
    refused: InvalidModelError | None = None  # why the model cannot be loaded at all (intact files)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


class ModelRefusedError(InvalidModelError):
    """The package is intact but its model cannot be loaded (bad external data reference, an
    operator domain onnxruntime lacks, a graph onnxruntime refuses): exit 2. ``run`` holds the checks."""

    def __init__(self, spec: ModelSpec, run: TestRun) -> None:
        why = run.refused
        text = why.message if why else "refused"
        super().__init__(text if str(spec) in text else f"Model {str(spec)!r} cannot be loaded: {text}",
                         hint=why.hint if why else None)
        self.run = run


def _timed(run: TestRun, name: str, fn: Callable[[], str]) -> bool:
    t0 = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False
    run.checks.append(Check(name, ok, detail, round(time.perf_counter() - t0, 4)))
    return ok


def _sample_inputs(version_dir: Path, manifest: Manifest, model: Any, batch: int = 1) -> dict[str, Any]:
    ref = _package_reference(version_dir)
    if ref is not None and "texts" in ref.get("inputs", {}) and model.text is not None:
        return {"texts": (ref["inputs"]["texts"] * batch)[: max(batch, 1)]}
    if model.text is not None:
        return {"texts": [SAMPLE_TEXT] * batch}
    from axon.model.inference import synthesize_inputs

    return {"tensors": synthesize_inputs(manifest.inputs, batch=batch)}


def _package_reference(version_dir: Path) -> dict[str, Any] | None:
    for rel in REFERENCE_PATHS:
        p = version_dir / rel
        if p.is_file():
            return dict(json.loads(p.read_text()))
    return None


def _check_outputs(manifest: Manifest, outputs: dict[str, np.ndarray]) -> str:
    for t in manifest.outputs:
        if t.name not in outputs:
            raise AxonError(f"declared output {t.name!r} is missing (graph gives {sorted(outputs)})")
        arr = outputs[t.name]
        if arr.dtype.name != t.dtype:
            raise AxonError(f"output {t.name!r} is {arr.dtype.name}, the manifest declares {t.dtype}")
        if len(arr.shape) != len(t.shape) or any(d > 0 and d != a for d, a in zip(t.shape, arr.shape, strict=False)):
            raise AxonError(f"output {t.name!r} has shape {list(arr.shape)}, the manifest declares {t.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise AxonError(f"output {t.name!r} holds NaN or infinity")
    return ", ".join(f"{k} {list(v.shape)} {v.dtype.name}" for k, v in outputs.items())


def run_tests(spec: ModelSpec, settings: Settings, *, device: str | None = None,
              raise_refused: bool = True) -> TestRun:
    """Integrity, onnx.checker (full), load in onnxruntime, one inference with sane outputs.

    Raises:
        ModelRefusedError: (with *raise_refused*) the files are intact but the model cannot be
            loaded (exit 2); its ``run`` holds the checks.
    """
    import onnx

    from axon.model.inference import LocalModel

    cached = get_installed(settings.cache_dir, spec)
    vdir, manifest = cached.path, cached.manifest
    run = TestRun()

    def integrity() -> str:
        report = verify_version_dir(vdir, manifest)
        report.raise_for_problems()
        return f"{report.files_checked} files, sha256 + xxh3-128"

    def refusing(fn: Callable[[], str]) -> Callable[[], str]:
        def wrapped() -> str:
            try:
                return fn()
            except InvalidModelError as exc:
                run.refused = run.refused or exc
                raise
        return wrapped

    @refusing
    def checker() -> str:
        from axon.model.onnx_signature import check_external_data, check_operator_domains, load_graph

        # Every external data reference and operator domain first: onnx.checker reads the files
        # the graph names, which must be the package's own.
        graph = load_graph(vdir / manifest.entrypoint)
        check_operator_domains(graph, Path(manifest.entrypoint).name)
        check_external_data(graph, manifest.entrypoint, {f.path for f in manifest.files})
        del graph
        onnx.checker.check_model(str(vdir / manifest.entrypoint), full_check=True)
        return f"opset {manifest.opset}, full check (shapes, external data)"

    @refusing
    def load() -> str:
        run.model = LocalModel(vdir, manifest, device=device or settings.device)
        return f"{run.model.provider}"

    def infer() -> str:
        feeds = _sample_inputs(vdir, manifest, run.model)
        outputs = run.model.run(**feeds)
        return _check_outputs(manifest, outputs)

    intact = _timed(run, "integrity", integrity)
    _timed(run, "onnx.checker", checker)
    if _timed(run, "load", load):
        _timed(run, "inference", infer)
    else:
        run.checks.append(Check("inference", False, "skipped: the model did not load"))
    if not intact:
        run.refused = None  # damaged files explain everything (exit 3/1, not 2)
    if raise_refused and run.refused is not None:
        raise ModelRefusedError(spec, run)
    return run


def _vm(field_name: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _gpu_memory_of_this_process() -> int | None:
    """GPU memory this process holds, from nvidia-smi (None when it cannot be asked)."""
    import os
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            return int(parts[1]) * 2**20
    return None


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def p(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1e3, 3)

    return {"p50_ms": p(0.50), "p95_ms": p(0.95), "p99_ms": p(0.99), "samples": len(s)}


def validate(spec: ModelSpec, settings: Settings, *, reference: Path | str | None = None, device: str | None = None,
             batch_size: int = 8, seconds: float = 2.0, reporter: Reporter | None = None) -> dict[str, Any]:
    """Everything ``test`` does, then performance, accuracy, resources and compatibility.

    Returns the report (also written beside the cached version) with ``passed``.
    """
    import onnx
    import onnxruntime as ort

    reporter = reporter or NullReporter()
    rss_before = _vm("VmRSS")
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
        _write(vdir, report)
        if run.refused is not None:
            raise ModelRefusedError(spec, run)
        return report
    report["provider"] = model.provider

    reporter.stage(f"performance: latency at batch 1, throughput at batch {batch_size}")
    one = _sample_inputs(vdir, manifest, model, 1)
    many = _sample_inputs(vdir, manifest, model, batch_size)
    for _ in range(5):
        model.run(**one)
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < 20:
        t0 = time.perf_counter()
        model.run(**one)
        lat.append(time.perf_counter() - t0)
        if len(lat) >= 2000:
            break
    model.run(**many)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        model.run(**many)
        n += batch_size
    report["performance"] = {"batch1": _percentiles(lat), "batch_size": batch_size,
                             "throughput_per_s": round(n / (time.perf_counter() - t0), 2)}

    reporter.stage("accuracy against reference outputs")
    report["accuracy"] = _accuracy(vdir, model, reference)

    peak = _vm("VmHWM")
    req = (manifest.requirements or {}).get("memory_bytes")
    report["resources"] = {
        "model_bytes": manifest.total_size, "rss_before_bytes": rss_before, "peak_rss_bytes": peak,
        "requirements_memory_bytes": req,
        "within_requirements": None if not req else bool(peak - rss_before <= 4 * int(req)),
        "gpu_memory_bytes": _gpu_memory_of_this_process() if model.provider == "CUDAExecutionProvider" else None,
    }
    dtypes = {t.dtype for t in manifest.inputs}
    supported = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}
    report["compatibility"] = {
        "opset": manifest.opset, "onnx_max_opset": onnx.defs.onnx_opset_version(),
        "opset_supported": manifest.opset <= onnx.defs.onnx_opset_version(),
        "available_providers": ort.get_available_providers(), "provider": model.provider,
        "input_dtypes": sorted(dtypes), "input_dtypes_supported": dtypes <= supported,
    }
    acc_ok = report["accuracy"].get("passed") in (True, None)
    compat = report["compatibility"]
    report["passed"] = bool(run.ok and acc_ok and compat["opset_supported"] and compat["input_dtypes_supported"])
    _write(vdir, report)
    return report


LIBRARY_ATOL, LIBRARY_COSINE = 1e-4, 0.9999


def _library_accuracy(vdir: Path, model: Any) -> dict[str, Any]:
    """The package against its own library (sentence-transformers / transformers) on sample texts."""
    from axon.library_reference import compare, library_reference

    ref = library_reference(vdir, model.manifest, (_package_reference(vdir) or {}).get("inputs", {}).get("texts"))
    outputs = model.run(texts=ref.texts)
    per_output: dict[str, Any] = {}
    failures = []
    for name, want in ref.outputs.items():
        got = outputs.get(name)
        if got is None:
            failures.append(f"{name}: missing")
            continue
        got = got.reshape(want.shape) if got.size == want.size else got
        if got.shape != want.shape:
            failures.append(f"{name}: shape {list(got.shape)} != the library's {list(want.shape)}")
            continue
        mask = ref.mask if name == "last_hidden_state" else None
        if mask is not None and mask.shape != got.shape[:2]:
            failures.append(f"{name}: tokens {list(got.shape[:2])} != the library's {list(mask.shape)}")
            continue
        per_output[name] = stats = compare(got, want, mask)
        cos = stats["min_cosine"]
        if stats["max_abs_diff"] > LIBRARY_ATOL or (cos is not None and cos < LIBRARY_COSINE):
            failures.append(f"{name}: max abs diff {stats['max_abs_diff']:.3g}"
                            + (f", min cosine {cos:.6f}" if cos is not None else ""))
    worst = max((v["max_abs_diff"] for v in per_output.values()), default=None)
    return {"passed": not failures, "source": f"library: {ref.library}", "atol": LIBRARY_ATOL,
            "min_cosine_required": LIBRARY_COSINE, "texts": len(ref.texts), "outputs": per_output,
            "max_abs_error": worst, "failures": failures}


def _accuracy(vdir: Path, model: Any, reference: Path | str | None) -> dict[str, Any]:
    if reference == "library":
        return _library_accuracy(vdir, model)
    if isinstance(reference, Path):
        try:
            ref = json.loads(reference.read_text())
        except (OSError, ValueError) as exc:
            return {"passed": False, "detail": f"cannot read reference {str(reference)!r}: {exc}"}
        source = str(reference)
    else:
        ref = _package_reference(vdir)
        source = "package samples"
        if ref is None:
            return {"passed": None, "detail": "no reference data (give --reference FILE)"}
    atol, rtol = float(ref.get("atol", 1e-4)), float(ref.get("rtol", 1e-3))
    inputs = ref.get("inputs", {})
    if "texts" in inputs:
        outputs = model.run(texts=list(inputs["texts"]))
    else:
        tensors = {k: np.asarray(v, dtype=np.dtype(next(t.dtype for t in model.manifest.inputs if t.name == k)))
                   for k, v in inputs.get("tensors", {}).items()}
        outputs = model.run(tensors=tensors)
    worst_abs = worst_rel = 0.0
    failures = []
    for name, expected in ref.get("outputs", {}).items():
        if name not in outputs:
            failures.append(f"{name}: missing")
            continue
        got = outputs[name].astype(np.float64)
        want = np.asarray(expected, dtype=np.float64)
        if got.shape != want.shape:
            failures.append(f"{name}: shape {list(got.shape)} != {list(want.shape)}")
            continue
        diff = np.abs(got - want)
        worst_abs = max(worst_abs, float(diff.max(initial=0)))
        worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(want), 1e-12)).max(initial=0)))
        if not np.allclose(got, want, atol=atol, rtol=rtol):
            failures.append(f"{name}: max abs error {float(diff.max()):.3g}")
    return {"passed": not failures, "source": source, "atol": atol, "rtol": rtol,
            "max_abs_error": worst_abs if math.isfinite(worst_abs) else None, "max_rel_error": worst_rel,
            "failures": failures}


def _summary(report: dict[str, Any]) -> str:
    lines = [f"validation of {report['spec']} ({report['digest']}): {'PASSED' if report['passed'] else 'FAILED'}",
             f"device {report['device']} -> {report.get('provider')}; onnxruntime {report['onnxruntime']}"]
    lines += [f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<14} {c['detail']}" for c in report["checks"]]
    perf = report.get("performance")
    if perf:
        b1 = perf["batch1"]
        lines.append(f"  perf   batch 1: p50 {b1['p50_ms']} ms, p95 {b1['p95_ms']} ms, p99 {b1['p99_ms']} ms; "
                     f"batch {perf['batch_size']}: {perf['throughput_per_s']}/s")
    acc = report.get("accuracy")
    if acc:
        state = {True: "PASS", False: "FAIL", None: "SKIP"}[acc.get("passed")]
        if "outputs" in acc:  # against the library: per output
            lines.append(f"  {state}  accuracy      {acc['source']}, {acc['texts']} sample texts")
            for name, st in acc["outputs"].items():
                cos = f", min cosine {st['min_cosine']:.6f}" if st["min_cosine"] is not None else ""
                lines.append(f"        {name}: max abs diff {st['max_abs_diff']:.3g}{cos}")
        else:
            lines.append(f"  {state}  accuracy      " + (
                f"max abs {acc.get('max_abs_error', 0):.3g}, max rel {acc.get('max_rel_error', 0):.3g} "
                f"({acc.get('source')})" if acc.get("passed") is not None else acc.get("detail", "")))
        lines += [f"        {f}" for f in acc.get("failures", [])]
    res = report.get("resources")
    if res:
        lines.append(f"  mem    peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB "
                     f"(model {res['model_bytes'] / 2**20:.1f} MiB)")
    comp = report.get("compatibility")
    if comp:
        lines.append(f"  compat opset {comp['opset']} (onnx supports <= {comp['onnx_max_opset']}), providers "
                     f"{', '.join(comp['available_providers'])}")
    return "\n".join(lines)


def _write(vdir: Path, report: dict[str, Any]) -> None:
    d = vdir / ".axon"
    d.mkdir(exist_ok=True)
    atomic_write_text(d / "validation.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(d / "validation.txt", _summary(report) + "\n")


def summary(report: dict[str, Any]) -> str:
    return _summary(report)


def load_report(vdir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((vdir / ".axon" / "validation.json").read_text()))
    except (OSError, ValueError):
        return None


def passing_report(vdir: Path, digest: str) -> dict[str, Any] | None:
    report = load_report(vdir)
    if report and report.get("passed") and report.get("digest") == digest:
        return report
    return None
