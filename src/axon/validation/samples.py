"""The inputs the checks run the model on: the package's own samples, else synthesised ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axon.model.quantize import REFERENCE_PATHS
from axon.store.manifest import Manifest

__all__ = ["REFERENCE_PATHS", "SAMPLE_TEXT", "package_reference", "sample_inputs"]

SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


def package_reference(version_dir: Path) -> dict[str, Any] | None:
    """The reference inputs and outputs the package ships (``samples/reference.json``), if any."""
    for rel in REFERENCE_PATHS:
        p = version_dir / rel
        if p.is_file():
            return dict(json.loads(p.read_text()))
    return None


def sample_inputs(version_dir: Path, manifest: Manifest, model: Any, batch: int = 1) -> dict[str, Any]:
    """Keyword arguments for ``model.run``: *batch* texts (the package's sample texts, else
    :data:`SAMPLE_TEXT`) for a text model, synthesised tensors otherwise."""
    ref = package_reference(version_dir)
    if ref is not None and "texts" in ref.get("inputs", {}) and model.text is not None:
        return {"texts": (ref["inputs"]["texts"] * batch)[: max(batch, 1)]}
    if model.text is not None:
        return {"texts": [SAMPLE_TEXT] * batch}
    from axon.model.inference import synthesize_inputs

    return {"tensors": synthesize_inputs(manifest.inputs, batch=batch)}
