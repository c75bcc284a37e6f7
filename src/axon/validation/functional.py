"""``axon test``: integrity, onnx.checker, load, one inference with sane outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axon.cache import get_installed
from axon.errors import AxonError, InvalidModelError
from axon.settings import Settings
from axon.store.integrity import verify_version_dir
from axon.store.manifest import Manifest
from axon.store.spec import ModelSpec
from axon.validation.samples import sample_inputs

__all__ = ["Check", "ModelRefusedError", "SmokeTestResult", "check_external_ranges", "run_tests"]


def check_external_ranges(graph: Any, manifest: Manifest) -> None:
    """Every external tensor's bytes (offset, length) lie inside its file, of the size the
    manifest gives (its sha256 was checked just before)."""
    from axon.model.onnx_signature import external_data_references, resolve_location

    sizes = {f.path: f.size for f in manifest.files}
    name = Path(manifest.entrypoint).name
    for ext in external_data_references(graph, name):
        path = resolve_location(manifest.entrypoint, ext.location)
        size = sizes.get(path, 0)
        end = ext.offset + (ext.length if ext.length is not None else 0)
        if ext.offset > size or end > size:
            raise InvalidModelError(
                f"Model {manifest.entrypoint!r} reads {ext.ref.where} from bytes {ext.offset}..{end} of {path!r}, "
                f"which holds {size} bytes.", hint="The export is broken: export the model again.")


def _check_beside_placeholders(vdir: Path, manifest: Manifest, external: list[str]) -> None:
    """onnx.checker on the graph, with each external data file stood in for by a sparse file of
    its size. The checker refuses a data file with several hard links (a guard against links
    planted to read files elsewhere), and the dev cache stores every file once, as links to its
    blob; the real files are the package's own and verified, which is what that guard asks."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="axon-checker-") as tmp:
        view = Path(tmp)
        sizes = {f.path: f.size for f in manifest.files}
        graph_copy = view / manifest.entrypoint
        graph_copy.parent.mkdir(parents=True, exist_ok=True)
        graph_copy.write_bytes((vdir / manifest.entrypoint).read_bytes())
        for rel in external:
            stand_in = view / rel
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            with open(stand_in, "wb") as f:
                f.truncate(sizes[rel])
        onnx.checker.check_model(str(graph_copy), full_check=True)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class SmokeTestResult:
    """What ``run_tests`` found: one :class:`Check` per step, and the model it loaded."""

    checks: list[Check] = field(default_factory=list)
    model: Any = None
    refused: InvalidModelError | None = None  # why the model cannot be loaded at all (intact files)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


class ModelRefusedError(InvalidModelError):
    """The package is intact but its model cannot be loaded (bad external data reference, an
    operator domain onnxruntime lacks, a graph onnxruntime refuses): exit 2. ``run`` holds the checks."""

    def __init__(self, spec: ModelSpec, run: SmokeTestResult) -> None:
        why = run.refused
        text = why.message if why else "refused"
        super().__init__(text if str(spec) in text else f"Model {str(spec)!r} cannot be loaded: {text}",
                         hint=why.hint if why else None)
        self.run = run


def _timed(run: SmokeTestResult, name: str, fn: Callable[[], str]) -> bool:
    t0 = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False
    run.checks.append(Check(name, ok, detail, round(time.perf_counter() - t0, 4)))
    return ok


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
              raise_refused: bool = True) -> SmokeTestResult:
    """Integrity, onnx.checker (full), load in onnxruntime, one inference with sane outputs.

    Raises:
        ModelRefusedError: (with *raise_refused*) the files are intact but the model cannot be
            loaded (exit 2); its ``run`` holds the checks.
    """
    import onnx

    from axon.model.inference import LocalModel

    cached = get_installed(settings.cache_dir, spec)
    vdir, manifest = cached.path, cached.manifest
    run = SmokeTestResult()

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
        external = check_external_data(graph, manifest.entrypoint, {f.path for f in manifest.files})
        if not external:
            del graph
            onnx.checker.check_model(str(vdir / manifest.entrypoint), full_check=True)
            return f"opset {manifest.opset}, full check (shapes, external data)"
        check_external_ranges(graph, manifest)
        del graph
        _check_beside_placeholders(vdir, manifest, external)
        return f"opset {manifest.opset}, full check (shapes, external data in {len(external)} verified file(s))"

    @refusing
    def load() -> str:
        run.model = LocalModel(vdir, manifest, device=device or settings.device)
        return f"{run.model.provider}"

    def infer() -> str:
        feeds = sample_inputs(vdir, manifest, run.model)
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
