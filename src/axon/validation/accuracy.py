"""The model's outputs against reference outputs: a reference file, the package's samples, or
the model's own library (sentence-transformers / transformers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from axon.validation.samples import package_reference

__all__ = ["LIBRARY_ATOL", "LIBRARY_COSINE", "accuracy_ok", "check_accuracy"]

LIBRARY_ATOL, LIBRARY_COSINE = 1e-4, 0.9999
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3


def _library_accuracy(vdir: Path, model: Any) -> dict[str, Any]:
    """The package against its own library (sentence-transformers / transformers) on sample texts."""
    from axon.library_reference import compare, library_reference

    ref = library_reference(vdir, model.manifest, (package_reference(vdir) or {}).get("inputs", {}).get("texts"))
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
        diff, cos = stats["max_abs_diff"] or 0.0, stats["min_cosine"]  # compare always measures the difference
        if diff > LIBRARY_ATOL or (cos is not None and cos < LIBRARY_COSINE):
            failures.append(f"{name}: max abs diff {stats['max_abs_diff']:.3g}"
                            + (f", min cosine {cos:.6f}" if cos is not None else ""))
    worst = max((v["max_abs_diff"] for v in per_output.values()), default=None)
    return {"passed": not failures, "source": f"library: {ref.library}", "atol": LIBRARY_ATOL,
            "min_cosine_required": LIBRARY_COSINE, "texts": len(ref.texts), "outputs": per_output,
            "max_abs_error": worst, "failures": failures}


def check_accuracy(version_dir: Path, model: Any, reference: Path | str | None) -> dict[str, Any]:
    """The report's ``accuracy`` section. *reference* is a JSON file (``inputs`` and expected
    ``outputs``, optional ``atol``/``rtol``), ``"library"``, or None for the package's
    ``samples/reference.json``; ``passed`` is None when there is nothing to compare with."""
    if reference == "library":
        return _library_accuracy(version_dir, model)
    if isinstance(reference, Path):
        try:
            ref = json.loads(reference.read_text())
        except (OSError, ValueError) as exc:
            return {"passed": False, "detail": f"cannot read reference {str(reference)!r}: {exc}"}
        source = str(reference)
    else:
        ref = package_reference(version_dir)
        source = "package samples"
        if ref is None:
            return {"passed": None, "detail": "no reference data (give --reference FILE)"}
    atol, rtol = float(ref.get("atol", DEFAULT_ATOL)), float(ref.get("rtol", DEFAULT_RTOL))
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


def accuracy_ok(accuracy: dict[str, Any]) -> bool:
    """Passed, or nothing to compare with: only a failed comparison fails a validation."""
    return accuracy.get("passed") in (True, None)
