"""Every malformed field gets a 400 that names it (issue #11, item 8), never a 500, and nothing
malformed is accepted: one test per kind of input, against one real server."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from tests.support.core_server import Core
from tests.support.served import MLP

KSERVE_MLP = "/v2/models/demo/mlp/versions/1/infer"
KSERVE_TEXT = "/v2/models/demo/enc/versions/1/infer"
ROW = np.arange(1, 5, dtype="<f4").tobytes()  # one [1, 4] FP32 row


def binary_request(head: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(head).encode()
    return raw + blob, {"Inference-Header-Content-Length": str(len(raw)), "Content-Type": "application/octet-stream"}


def x_input(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", **fields}


def text_input(size: int) -> dict[str, Any]:
    return {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}


def assert_400_naming(answer: tuple[int, Any, dict[str, str]], *words: str) -> None:
    status, body, _ = answer
    assert status == 400, (status, body)
    assert isinstance(body, dict) and body["status"] == "error" and body["code"] and body["message"], body
    assert "\n" not in body["message"] and "Traceback" not in body["message"]
    for word in words:
        assert word in body["message"], (word, body["message"])


def post_binary(core: Core, path: str, head: dict[str, Any], blob: bytes) -> tuple[int, Any, dict[str, str]]:
    raw, headers = binary_request(head, blob)
    return core.call("POST", path, raw=raw, headers=headers)


# --- KServe binary framing and fields ---------------------------------------------------------------


@pytest.mark.parametrize("size", [[16], "sixteen", "16", {"n": 16}, True])
def test_binary_data_size_of_the_wrong_type(core: Core, size: Any) -> None:
    answer = post_binary(core, KSERVE_MLP, {"inputs": [x_input(parameters={"binary_data_size": size})]}, ROW)
    assert_400_naming(answer, "binary_data_size", "'x'")


def test_fractional_binary_data_size(core: Core) -> None:
    answer = post_binary(core, KSERVE_MLP, {"inputs": [x_input(parameters={"binary_data_size": 16.5})]}, ROW)
    assert_400_naming(answer, "binary_data_size", "'x'")


@pytest.mark.parametrize("where", ["input", "request", "output"])
def test_parameters_that_are_not_objects(core: Core, where: str) -> None:
    request: dict[str, Any] = {"inputs": [x_input(data=[1, 2, 3, 4])]}
    if where == "input":
        request["inputs"][0]["parameters"] = "binary"
    elif where == "request":
        request["parameters"] = [1]
    else:
        request["outputs"] = [{"name": "y", "parameters": 5}]
    assert_400_naming(core.call("POST", KSERVE_MLP, request), "'parameters'")


@pytest.mark.parametrize("datatype", [["FP32"], {"type": "FP32"}])
def test_datatype_that_is_not_a_string(core: Core, datatype: Any) -> None:
    answer = core.call("POST", KSERVE_MLP, {"inputs": [x_input(datatype=datatype, data=[1, 2, 3, 4])]})
    assert_400_naming(answer, "'datatype'", "'x'")


def test_more_than_64_dimensions(core: Core) -> None:
    head = {"inputs": [x_input(shape=[1] * 65, parameters={"binary_data_size": 4})]}
    assert_400_naming(post_binary(core, KSERVE_MLP, head, ROW[:4]), "'shape'", "64")


@pytest.mark.parametrize("shape", [[1, 2**62, 4], [2**32, 2**32]])
def test_shape_whose_product_wraps_around(core: Core, shape: list[int]) -> None:
    # numpy's int64 product of these is 0, which matched an empty binary part
    head = {"inputs": [x_input(shape=shape, parameters={"binary_data_size": 0})]}
    assert_400_naming(post_binary(core, KSERVE_MLP, head, b""), "shape", "'x'")


def test_truncated_bytes_element(core: Core) -> None:
    assert_400_naming(post_binary(core, KSERVE_TEXT, {"inputs": [text_input(3)]}, b"\x05\x00\x00"),
                      "BYTES", "'text'", "truncated")


def test_non_utf8_bytes_element(core: Core) -> None:
    blob = struct.pack("<I", 2) + b"\xff\xfe"
    assert_400_naming(post_binary(core, KSERVE_TEXT, {"inputs": [text_input(len(blob))]}, blob),
                      "BYTES", "'text'", "UTF-8")


def test_negative_binary_data_size_for_bytes(core: Core) -> None:
    blob = struct.pack("<I", 2) + b"hi" + b"!"
    assert_400_naming(post_binary(core, KSERVE_TEXT, {"inputs": [text_input(-1)]}, blob),
                      "binary_data_size", "'text'")


def test_bytes_length_prefix_beyond_the_data(core: Core) -> None:
    blob = struct.pack("<I", 0xFFFFFFFF) + b"hi"  # -1 as an int32: the rest would be taken as the text
    assert_400_naming(post_binary(core, KSERVE_TEXT, {"inputs": [text_input(len(blob))]}, blob),
                      "BYTES", "'text'", "4294967295")


def test_duplicated_inputs(core: Core) -> None:
    answer = core.call("POST", KSERVE_MLP, {"inputs": [x_input(data=[1, 2, 3, 4]), x_input(data=[5, 6, 7, 8])]})
    assert_400_naming(answer, "'x'", "more than once")


def test_binary_data_left_over(core: Core) -> None:
    head = {"inputs": [x_input(parameters={"binary_data_size": 16})]}
    assert_400_naming(post_binary(core, KSERVE_MLP, head, ROW + b"tail"), "binary_data_size", "4 bytes")


@pytest.mark.parametrize("value", ["1_0", "+10", "1e1", "²"])
def test_header_length_that_is_not_plain_digits(core: Core, value: str) -> None:
    raw, headers = binary_request({"inputs": [x_input(parameters={"binary_data_size": 16})]}, ROW)
    answer = core.call("POST", KSERVE_MLP, raw=raw, headers={**headers, "Inference-Header-Content-Length": value})
    assert_400_naming(answer, "inference-header-content-length")


# --- model ids in the path -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/models/demo%252Fmlp%25401/inference"),
    ("GET", "/models/demo%252Fmlp%25401"),
    ("POST", "/v2/models/demo%252Fmlp/versions/1/infer"),
    ("GET", "/v2/models/demo%252Fmlp"),
])
def test_doubly_encoded_model_id(core: Core, method: str, path: str) -> None:
    body = {"inputs": {"x": [[1, 2, 3, 4]]}} if path.endswith("inference") else \
        {"inputs": [x_input(data=[1, 2, 3, 4])]} if method == "POST" else None
    assert_400_naming(core.call(method, path, body), "'%'")
    # encoded once, the same id works
    once = path.replace("%25", "%")
    assert core.call(method, once, body)[0] == 200


# --- the native JSON API -----------------------------------------------------------------------------


@pytest.mark.parametrize("outputs", ["y", [1], [None], {"y": True}])
def test_native_outputs_that_are_not_a_list_of_names(core: Core, outputs: Any) -> None:
    answer = core.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}, "outputs": outputs})
    assert_400_naming(answer, "'outputs'")


def test_native_too_many_rows_refused_before_conversion(core: Core) -> None:
    answer = core.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]] * 17}})
    assert_400_naming(answer, "'x'", "16 rows")


# --- admin routes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"parameters": [1]}, {"parameters": "1"}, {"parameters": {"version": 1}},
                                  {"parameters": {"version": {"v": "1"}}}, [1]])
def test_repository_load_with_malformed_parameters(core: Core, body: Any) -> None:
    answer = core.call("POST", "/v2/repository/models/demo/mlp/load", body)
    assert_400_naming(answer, "parameters" if isinstance(body, dict) else "JSON object")


@pytest.mark.parametrize("body", [{"model_id": 5}, {"manifest_path": ["demo/mlp/1"]}, {"path": {"a": 1}},
                                  {"model_id": "demo/mlp@1", "model_path": 7}, "demo/mlp@1"])
def test_register_with_malformed_fields(core: Core, body: Any) -> None:
    answer = core.call("POST", "/models/register", body)
    assert_400_naming(answer, *([next(iter(k for k, v in body.items() if not isinstance(v, str)))]
                                if isinstance(body, dict) else ["JSON object"]))
