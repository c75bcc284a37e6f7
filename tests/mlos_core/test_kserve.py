"""KServe v2 / Open Inference Protocol: the JSON endpoints and the real tritonclient."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.core_server import Core
from tests.support.served import mlp_reference


def test_kserve_v2_json_endpoints(core: Core) -> None:
    assert core.call("GET", "/v2")[1]["name"] == "mlos-core"
    assert core.call("GET", "/v2/health/live")[0] == 200 and core.call("GET", "/v2/health/ready")[0] == 200
    status, meta, _ = core.call("GET", "/v2/models/demo/mlp")
    assert status == 200 and meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert core.call("GET", "/v2/models/demo/mlp/versions/1/ready")[0] == 200
    status, out, _ = core.call("POST", "/v2/models/demo/mlp/versions/1/infer", {
        "id": "req-7",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]})
    assert status == 200 and out["id"] == "req-7" and out["model_version"] == "1"
    assert core.call("GET", "/v2/models/demo/mlp/versions/1/infer")[0] == 405
    assert core.call("POST", "/v2/models/demo/nope/infer", {"inputs": []})[1]["code"] == "model_not_found"
    assert core.call("POST", "/v2/models/demo/mlp/infer", raw=b"{oops")[1]["code"] == "bad_json"
    (y,) = out["outputs"]
    ref = mlp_reference(np.arange(1, 9, dtype=np.float32).reshape(2, 4))
    np.testing.assert_allclose(np.asarray(y["data"]).reshape(y["shape"]), ref, rtol=1e-5)
    index = core.call("GET", "/v2/repository/index")[1]
    assert {(r["name"], r["version"], r["state"]) for r in index} >= {("demo/mlp", "1", "READY")}
    assert core.call("POST", "/v2/repository/models/demo/mlp/unload", {"parameters": {"version": "1"}},
                     token=None)[0] == 401
    assert core.call("POST", "/v2/repository/models/demo/mlp/unload", {"parameters": {"version": "1"}})[0] == 200
    assert core.call("GET", "/v2/models/demo/mlp")[0] == 404
    assert core.call("POST", "/v2/repository/models/demo/mlp/load", {"parameters": {"version": "1"}})[0] == 200
    assert core.call("GET", "/v2/models/demo/mlp/versions/1")[0] == 200


def test_tritonclient_http_round_trip(core: Core) -> None:
    tritonclient = pytest.importorskip("tritonclient.http")
    client = tritonclient.InferenceServerClient(core.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready("demo/mlp", "1")
        x = np.asarray([[1, 2, 3, 4], [4, 3, 2, 1]], np.float32)
        for binary in (True, False):
            inp = tritonclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = tritonclient.InferRequestedOutput("y", binary_data=binary)
            res = client.infer("demo/mlp", [inp], model_version="1", outputs=[out])
            np.testing.assert_allclose(res.as_numpy("y"), mlp_reference(x), rtol=1e-5)
        text = tritonclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.asarray([b"Hello, MLOS!", b"hi"], dtype=object))
        res = client.infer("demo/enc", [text], model_version="1",
                           outputs=[tritonclient.InferRequestedOutput("embeddings")])
        assert res.as_numpy("embeddings").shape == (2, 64)
    finally:
        client.close()
