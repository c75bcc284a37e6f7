"""Tensors on the wire: JSON lists and KServe v2 (JSON + binary extension) <-> numpy."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from axon.store.dtypes import numpy_type
from mlos_core.errors import ApiError

if TYPE_CHECKING:
    from axon.store.manifest import TensorSpec

__all__ = ["MAX_DIMS", "RequestSchema", "array_from_json", "check_against_schema", "np_dtype"]

class RequestSchema(NamedTuple):
    """What validating a request against a model needs: plain data, so that a large body can be
    parsed and checked in a helper process."""

    model_id: str
    inputs: tuple[TensorSpec, ...]
    text_max_length: int | None  # None: not a text model
    max_rows: int  # rows per batch: the batcher's max_batch_size (tensor requests: per request)
    max_texts: int = 2048  # texts per request; more than max_rows are split into batches
    pairs: bool = False  # a classifier / cross-encoder: it also takes text pairs


def np_dtype(name: str) -> Any:
    np_type = numpy_type(name)
    if np_type is None:
        raise ApiError(400, "bad_dtype", f"unsupported dtype {name!r}")
    return np_type


MAX_DIMS = 64  # numpy's limit on dimensions
PIECE = 1 << 16  # values per numpy call when converting off the event loop (see _asarray)


def _leaves(item: Any) -> int:
    """Values in *item* if it is rectangular (following first elements): a cheap size estimate."""
    n = 1
    while isinstance(item, list):
        n *= len(item)
        if not item:
            break
        item = item[0]
    return n


def _asarray(data: Any, dtype: Any, pieces: bool) -> np.ndarray:
    """np.asarray, or with *pieces* at most ~PIECE values per numpy call: converting a nested list
    holds the GIL for the whole call (about a second for 10 M values), so on a worker thread the
    event loop only gets to run between calls. Ragged data fails either way (ValueError)."""
    if not pieces or not isinstance(data, list) or len(data) < 2:
        return np.asarray(data, dtype=dtype)
    per_item = _leaves(data[0])
    if per_item > PIECE and isinstance(data[0], list):
        return np.stack([_asarray(item, dtype, pieces) for item in data])
    step = max(1, PIECE // max(1, per_item))
    if step >= len(data):
        return np.asarray(data, dtype=dtype)
    return np.concatenate([np.asarray(data[i : i + step], dtype=dtype) for i in range(0, len(data), step)])


def array_from_json(name: str, data: Any, dtype: Any, shape: list[int] | None = None, *,
                    pieces: bool = False) -> np.ndarray:
    """Build an array from nested lists (or a flat list plus *shape*); 400 naming the tensor if not."""
    try:
        arr = _asarray(data, dtype, pieces)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, "bad_tensor", f"input {name!r} is not a rectangular array of {np.dtype(dtype).name} "
                       "(nested lists of numbers)") from None
    if arr.dtype == object:
        raise ApiError(400, "bad_tensor", f"input {name!r} is not a rectangular array")
    if shape is not None:
        if len(shape) > MAX_DIMS or any(type(d) is not int or d < 0 for d in shape):
            raise ApiError(400, "bad_shape", f"input {name!r} has an invalid shape {shape!r}")
        if math.prod(shape) != arr.size:
            raise ApiError(400, "bad_shape", f"input {name!r}: {arr.size} values do not fill shape {shape}")
        arr = arr.reshape(shape)
    return arr


def check_against_schema(name: str, arr: np.ndarray, schema_shape: list[int], dtype: str) -> np.ndarray:
    """Cast to the model's dtype and check rank and fixed dimensions (batch dimension excepted)."""
    want = np.dtype(np_dtype(dtype))
    if arr.dtype != want:
        if arr.dtype.kind == "f" and want.kind in "iu":
            raise ApiError(400, "bad_dtype", f"input {name!r} must be {want.name}, got floating-point values")
        arr = arr.astype(want)
    if len(schema_shape) and arr.ndim != len(schema_shape):
        raise ApiError(400, "bad_shape", f"input {name!r} must have {len(schema_shape)} dimensions, got {arr.ndim} "
                       f"(shape {list(arr.shape)})")
    for i, (got, expected) in enumerate(zip(arr.shape, schema_shape, strict=False)):
        if i > 0 and expected > 0 and got != expected:
            raise ApiError(400, "bad_shape", f"input {name!r} dimension {i} must be {expected}, got {got}")
    return arr
