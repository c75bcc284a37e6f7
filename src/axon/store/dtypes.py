"""The tensor element types a manifest may name (numpy's names, as ``TensorSpec.dtype`` holds them),
with their numpy type and KServe v2 datatype: the one table every reader and writer uses."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DTYPES", "from_kserve", "kserve_name", "numpy_type"]

# manifest name -> (numpy type, KServe v2 / Triton datatype)
DTYPES: dict[str, tuple[type[Any], str]] = {
    "float32": (np.float32, "FP32"), "float16": (np.float16, "FP16"), "float64": (np.float64, "FP64"),
    "int64": (np.int64, "INT64"), "int32": (np.int32, "INT32"), "int16": (np.int16, "INT16"),
    "int8": (np.int8, "INT8"), "uint8": (np.uint8, "UINT8"), "uint16": (np.uint16, "UINT16"),
    "uint32": (np.uint32, "UINT32"), "uint64": (np.uint64, "UINT64"), "bool": (np.bool_, "BOOL"),
}
_FROM_KSERVE = {kserve: np_type for np_type, kserve in DTYPES.values()}


def numpy_type(name: str) -> type[Any] | None:
    """The numpy type of a manifest dtype name (None when it is not one we carry)."""
    entry = DTYPES.get(name)
    return entry[0] if entry else None


def kserve_name(name: str) -> str:
    """The KServe v2 datatype of a numpy dtype name (``BYTES`` for anything else, e.g. strings)."""
    entry = DTYPES.get(name)
    return entry[1] if entry else "BYTES"


def from_kserve(datatype: str) -> type[Any] | None:
    """The numpy type of a KServe v2 datatype (None when it is not a numeric one we carry)."""
    return _FROM_KSERVE.get(datatype)
