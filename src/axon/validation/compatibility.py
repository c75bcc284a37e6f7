"""Whether this installation can run the model: opset, input dtypes, execution providers."""

from __future__ import annotations

from typing import Any

from axon.store.manifest import Manifest

__all__ = ["SUPPORTED_INPUT_DTYPES", "check_compatibility", "is_compatible"]

SUPPORTED_INPUT_DTYPES = frozenset({"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"})


def check_compatibility(manifest: Manifest, provider: str) -> dict[str, Any]:
    """The report's ``compatibility`` section: the model's opset against what the installed onnx
    supports, its input dtypes against those axon can feed, the providers onnxruntime offers."""
    import onnx
    import onnxruntime as ort

    dtypes = {t.dtype for t in manifest.inputs}
    return {
        "opset": manifest.opset, "onnx_max_opset": onnx.defs.onnx_opset_version(),
        "opset_supported": manifest.opset <= onnx.defs.onnx_opset_version(),
        "available_providers": ort.get_available_providers(), "provider": provider,
        "input_dtypes": sorted(dtypes), "input_dtypes_supported": dtypes <= SUPPORTED_INPUT_DTYPES,
    }


def is_compatible(compatibility: dict[str, Any]) -> bool:
    return bool(compatibility["opset_supported"] and compatibility["input_dtypes_supported"])
