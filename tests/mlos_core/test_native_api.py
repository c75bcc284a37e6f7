"""The native inference API on a real server: outputs as onnxruntime computes them, batching, bad requests."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest

from axon.settings import Settings
from tests.support.core_server import Core
from tests.support.served import MLP, TEXT, mlp_reference, ort_text_embedding


def test_text_inference_matches_onnxruntime(core: Core, published: tuple[Settings, Path]) -> None:
    settings, _ = published
    vdir = settings.publish_dir / "demo" / "enc" / "1"
    status, body, _ = core.call("POST", f"/models/{TEXT}/inference", {"input": "Hello, MLOS!"})
    assert status == 200, body
    emb = body["outputs"]["embeddings"]
    assert emb["shape"] == [1, 64] and emb["dtype"] == "float32"
    np.testing.assert_allclose(np.asarray(emb["data"]), ort_text_embedding(vdir, "Hello, MLOS!"), atol=1e-5)
    assert body["outputs"]["last_hidden_state"]["shape"][0] == 1
    assert body["inference_time_us"] > 0 and body["queue_time_us"] >= 0
    # URL-encoded id, as upstream clients send it.
    status, body2, _ = core.call("POST", "/models/demo%2Fenc%401/inference", {"input": "Hello, MLOS!",
                                                                               "outputs": ["embeddings"]})
    assert status == 200 and list(body2["outputs"]) == ["embeddings"]


def test_mixed_lengths_in_one_batch_match_single_runs(core: Core, published: tuple[Settings, Path]) -> None:
    settings, _ = published
    vdir = settings.publish_dir / "demo" / "enc" / "1"
    texts = ["hi", "the quick brown fox jumps over the lazy dog", "hello world", "machine learning model server"]
    status, body, _ = core.call("POST", f"/models/{TEXT}/inference", {"input": texts, "outputs": ["embeddings"]})
    assert status == 200
    got = np.asarray(body["outputs"]["embeddings"]["data"])
    for i, t in enumerate(texts):
        np.testing.assert_allclose(got[i : i + 1], ort_text_embedding(vdir, t), atol=1e-5)
    # And across requests batched together by the server.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = {pool.submit(core.call, "POST", f"/models/{TEXT}/inference",
                               {"input": t, "outputs": ["embeddings"]}): t for t in texts * 6}
        sizes = set()
        for fut, t in futures.items():
            status, b, _ = fut.result()
            assert status == 200
            sizes.add(b["batch_size"])
            np.testing.assert_allclose(np.asarray(b["outputs"]["embeddings"]["data"]), ort_text_embedding(vdir, t),
                                       atol=1e-5)


def test_more_texts_than_a_batch_are_batched_and_answered_as_one(core: Core, published: tuple[Settings, Path]) -> None:
    """40 texts against --max-batch-size 16: three batches, one answer in order, each row exact."""
    settings, _ = published
    vdir = settings.publish_dir / "demo" / "enc" / "1"
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(40)]
    status, body, _ = core.call("POST", f"/models/{TEXT}/inference", {"input": texts, "outputs": ["embeddings"]})
    assert status == 200, body
    got = np.asarray(body["outputs"]["embeddings"]["data"])
    assert got.shape == (40, 64) and body["batch_size"] <= 16
    for i in (0, 15, 16, 31, 32, 39):
        np.testing.assert_allclose(got[i : i + 1], ort_text_embedding(vdir, texts[i]), atol=1e-5)
    status, body, _ = core.call("POST", f"/models/{TEXT}/inference", {"input": ["x"] * 2049})
    assert (status, body["code"]) == (400, "too_many_inputs") and "2048" in body["message"], body


def test_tensor_inference_and_many_concurrent_clients(core: Core) -> None:
    def one(i: int) -> tuple[int, list[list[float]]]:
        status, body, _ = core.call("POST", f"/models/{MLP}/inference",
                                    {"inputs": {"x": [[i, -i, i / 2, 1.0]]}})
        assert status == 200, body
        return i, body["outputs"]["y"]["data"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200
    xs = np.asarray([[i, -i, i / 2, 1.0] for i, _ in results], np.float32)
    np.testing.assert_allclose(np.asarray([r[0] for _, r in results]), mlp_reference(xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("path", "raw", "status", "code"),
    [
        (f"/models/{MLP}/inference", b"{not json", 400, "bad_json"),
        (f"/models/{MLP}/inference", b'{"inputs": {"z": [[1]]}}', 400, "bad_inputs"),
        (f"/models/{MLP}/inference", b'{"inputs": {"x": [[1, 2, 3]]}}', 400, "bad_shape"),
        (f"/models/{MLP}/inference", b'{"inputs": {"x": [[1, 2], [3]]}}', 400, "bad_tensor"),
        (f"/models/{MLP}/inference", b'{"input": "text for a tensor model"}', 400, "not_a_text_model"),
        (f"/models/{TEXT}/inference", b'{"input": 42}', 400, "bad_input"),
        ("/models/demo/nope@1/inference", b'{"input": "x"}', 404, "model_not_found"),
        (f"/models/{MLP}/inference", b"", 405, "method_not_allowed"),  # GET
        ("/no/such/route", b"", 404, "not_found"),
    ],
)
def test_bad_requests_get_clear_4xx(core: Core, path: str, raw: bytes, status: int, code: str) -> None:
    got, body, _ = core.call("POST" if raw else "GET", path, raw=raw or None)
    assert got == status and body["status"] == "error" and body["code"] == code
    assert "Traceback" not in body["message"]


def test_a_bad_request_never_fails_its_neighbours(core: Core) -> None:
    good = {"inputs": {"x": [[1, 2, 3, 4]]}}
    bad = {"inputs": {"x": [[1, 2, 3]]}}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(core.call, "POST", f"/models/{MLP}/inference", bad if i % 3 == 0 else good)
                for i in range(48)]
        codes = [f.result()[0] for f in futs]
    assert codes == [400 if i % 3 == 0 else 200 for i in range(48)]


def test_pooling_fused_into_the_graph_is_reported_and_exact(core: Core, published: tuple[Settings, Path]) -> None:
    settings, _ = published
    models = {m["model_id"]: m for m in core.call("GET", "/models")[1]["models"]}
    assert "mean pooling in the graph" in (models[TEXT]["runtime_notes"] or "")
    vdir = settings.publish_dir / "demo" / "enc" / "1"
    for outputs in (["embeddings"], None):
        body = {"input": "fast safe model inference", **({"outputs": outputs} if outputs else {})}
        answer = core.call("POST", f"/models/{TEXT}/inference", body)[1]["outputs"]
        assert set(answer) == ({"embeddings"} if outputs else {"embeddings", "last_hidden_state"})
        np.testing.assert_allclose(np.asarray(answer["embeddings"]["data"]),
                                   ort_text_embedding(vdir, "fast safe model inference"), atol=1e-5)
