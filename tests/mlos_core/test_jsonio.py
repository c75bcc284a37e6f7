"""jsonio: what the server writes reads back to the same numbers, whatever the array's layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlos_core.wire import JSONResponse, dumps, loads


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "uint8", "bool"])
def test_arrays_read_back_exactly(dtype: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    back = np.asarray(json.loads(dumps({"data": arr}))["data"], dtype=dtype)
    assert back.shape == arr.shape and np.array_equal(back, arr)


def test_float32_uses_the_shortest_text_for_float32() -> None:
    # 0.1 as float32 is 0.100000001490116...; float64 repr would print all of that.
    assert dumps(np.asarray([0.1], np.float32)) == b"[0.1]"


def test_non_contiguous_and_zero_d_arrays() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert json.loads(dumps(arr.T)) == arr.T.tolist()
    assert json.loads(dumps(arr[:, ::2])) == arr[:, ::2].tolist()
    assert json.loads(dumps(np.float32(1.5))) == 1.5
    assert json.loads(dumps(np.array(7, np.int64))) == 7


def test_nan_becomes_null_and_unknown_types_fail_loudly() -> None:
    assert json.loads(dumps({"x": np.asarray([1.0, np.nan], np.float32)})) == {"x": [1.0, None]}
    with pytest.raises(TypeError):
        dumps({"x": object()})


def test_loads_is_strict_json() -> None:
    assert loads(b'{"input": "hi", "n": [1, 2.5]}') == {"input": "hi", "n": [1, 2.5]}
    for bad in (b"{", b"NaN", b'{"a": 1,}', b"\xff"):
        with pytest.raises(ValueError):
            loads(bad)


def test_response_media_type_and_body() -> None:
    resp = JSONResponse({"ok": True, "v": np.asarray([1, 2], np.int64)}, status_code=201)
    assert resp.status_code == 201 and resp.media_type == "application/json"
    assert json.loads(resp.body) == {"ok": True, "v": [1, 2]}
