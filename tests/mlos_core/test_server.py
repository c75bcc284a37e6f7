"""MLOS Core as a real server process on 127.0.0.1 with real onnxruntime sessions."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from tokenizers import Tokenizer

from axon.demo import sandbox_settings
from axon.example_model import build_example_package
from axon.settings import Settings
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.onnx_models import mlp_model, write_mlp

TEXT = "demo/enc@1"
MLP = "demo/mlp@1"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    tmp = tmp_path_factory.mktemp("core")
    settings = sandbox_settings(tmp)
    publish_dir_as(settings, TEXT, build_example_package(tmp / "enc-src"))
    write_mlp(tmp / "mlp-src" / "model.onnx", features=4, out=3, seed=5)
    publish_dir_as(settings, MLP, tmp / "mlp-src")
    return settings, tmp


@pytest.fixture(scope="module")
def core(published: tuple[Settings, Path]) -> Iterator[Core]:
    settings, tmp = published
    with core_server(settings.publish_dir, tmp, "--max-batch-size", "16") as c:
        for spec in (TEXT, MLP):
            status, body, _ = c.call("POST", "/models/register", {"model_id": spec})
            assert status == 201, body
        yield c


def ort_text_embedding(version_dir: Path, text: str) -> np.ndarray:
    tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    enc = tok.encode(text)
    ids = np.asarray([enc.ids], np.int64)
    mask = np.asarray([enc.attention_mask], np.int64)
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
    pooled = hidden.mean(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def mlp_reference(x: np.ndarray) -> np.ndarray:
    model = mlp_model(features=4, out=3, seed=5)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


# --- health, listing, auth ---------------------------------------------------------------------


def test_health_models_and_metrics(core: Core) -> None:
    status, body, _ = core.call("GET", "/health")
    assert status == 200 and body["status"] == "healthy" and body["version"]
    status, body, _ = core.call("GET", "/models")
    states = {m["model_id"]: (m["state"], m["provider"]) for m in body["models"]}
    assert states[TEXT] == ("ready", "CPUExecutionProvider") and states[MLP][0] == "ready"
    core.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
    status, text, _ = core.call("GET", "/metrics")
    assert status == 200
    text = text.decode() if isinstance(text, bytes) else str(text)
    assert f'mlos_requests_total{{model="{MLP}",outcome="ok"}}' in text
    assert "mlos_batch_size_bucket" in text and "mlos_queue_depth" in text and "mlos_models_loaded" in text


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_admin_calls_need_the_token(core: Core, token: str | None) -> None:
    status, body, _ = core.call("POST", "/models/register", {"model_id": MLP}, token=token)
    assert status == 401 and body["status"] == "error" and "Bearer" in body["message"]
    status, _, _ = core.call("DELETE", f"/models/{MLP}", token=token)
    assert status == 401
    status, body, _ = core.call("POST", "/models/register", {"model_id": MLP})
    assert status == 200 and body["status"] == "unchanged"


# --- inference correctness ----------------------------------------------------------------------


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


# --- containment attacks -------------------------------------------------------------------------


def _copy_version_as(good: Path, repo: Path, name: str, extra_file: dict[str, object] | None = None) -> Path:
    """Copy the published version *good* to demo/<name>/1 in *repo* (writable), renamed in its manifest."""
    dest = repo / "demo" / name / "1"
    shutil.copytree(good, dest)
    for p in [dest, *dest.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    m = yaml.safe_load((dest / "manifest.yaml").read_text())
    m["metadata"]["name"] = name
    if extra_file is not None:
        m["spec"]["files"].append(extra_file)
    (dest / "manifest.yaml").write_text(yaml.safe_dump(m))
    return dest


def test_containment_attacks_are_refused(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    root = settings.publish_dir
    good = root / "demo" / "mlp" / "1"
    repo = tmp_path / "repo"
    shutil.copytree(root, repo, symlinks=True, ignore=shutil.ignore_patterns("core"))
    # A sibling sharing the root's prefix, holding a perfectly valid model.
    evil = Path(str(repo) + "-evil")
    shutil.copytree(good, evil / "demo" / "mlp" / "1")
    # A symlink inside the repository pointing out of it.
    (repo / "demo" / "escape").symlink_to(evil / "demo" / "mlp")
    # A manifest listing ../../etc/passwd.
    _copy_version_as(good, repo, "bad", extra_file={"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64,
                                                    "xxh3_128": "0" * 32})
    # A published file whose content changed after publishing.
    changed = _copy_version_as(good, repo, "changed")
    data = bytearray((changed / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (changed / "model.onnx").write_bytes(bytes(data))
    attacks = [
        ({"manifest_path": str(evil / "demo" / "mlp" / "1" / "manifest.yaml")}, 403),
        ({"manifest_path": str(repo / "demo" / "escape" / "1")}, 403),
        ({"path": "demo/mlp/../../../etc"}, 400),
        ({"model_path": str(repo) + "/demo/mlp/1/../../../../tmp"}, 400),
        ({"model_id": "demo/bad@1"}, 400),
        ({"manifest_path": str(settings.cache_dir / "demo" / "mlp" / "1" / "manifest.yaml")}, 403),
        ({"model_id": "demo/changed@1"}, 409),
        ({"model_id": "../etc/passwd"}, 400),
        ({"model_id": "demo/missing@1"}, 404),
    ]
    with core_server(repo, tmp_path) as c:
        for body, expected in attacks:
            status, answer, _ = c.call("POST", "/models/register", body)
            assert status == expected, (body, answer)
            assert answer["status"] == "error" and answer["message"]
        assert c.call("GET", "/models")[1]["models"] == []
        status, answer, _ = c.call("POST", "/models/register", {"manifest_path": "demo/mlp/1"})
        assert status == 201, answer


# --- lifecycle -------------------------------------------------------------------------------------


def test_reload_restart_and_unregister(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "v1" / "model.onnx", seed=1)
    write_mlp(tmp_path / "v2" / "model.onnx", seed=2)
    publish_dir_as(settings, MLP, tmp_path / "v1")
    x = {"inputs": {"x": [[0.5, 1, 2, 3]]}}
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
        first = c.call("POST", f"/models/{MLP}/inference", x)[1]["outputs"]["y"]["data"]
        assert c.call("POST", "/models/register", {"model_id": MLP})[1]["status"] == "unchanged"
        publish_dir_as(settings, MLP, tmp_path / "v2", force=True)
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP})
        assert status == 200 and body["status"] == "reloaded"
        second = c.call("POST", f"/models/{MLP}/inference", x)[1]["outputs"]["y"]["data"]
        assert second != first
    with core_server(settings.publish_dir, tmp_path) as c:  # restart: restored and re-verified
        assert [m["model_id"] for m in c.call("GET", "/models")[1]["models"]] == [MLP]
        assert c.call("POST", f"/models/{MLP}/inference", x)[1]["outputs"]["y"]["data"] == second
        assert c.call("DELETE", f"/models/{MLP}")[0] == 200
        assert c.call("POST", f"/models/{MLP}/inference", x)[0] == 404
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("GET", "/models")[1]["models"] == []


def test_queue_overflow_gets_503_while_admitted_requests_succeed(published: tuple[Settings, Path],
                                                                 tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--max-queue-size", "4", "--max-queue-delay-ms", "400",
                     "--max-batch-size", "64") as c:
        c.call("POST", "/models/register", {"model_id": MLP})
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            futs = [pool.submit(c.call, "POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
                    for _ in range(20)]
            time.sleep(0.15)  # four requests now fill the queue for the rest of the 400 ms window
            # a full queue is checked before the body is read: even a malformed request gets the 503,
            # and so does one whose body has not arrived (nothing waits for it)
            status, body, _ = c.call("POST", f"/models/{MLP}/inference", raw=b"{not json")
            host, port = c.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(f"POST /models/{MLP}/inference HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                             .encode())
                no_body = b""
                while b"queue_full" not in no_body and (chunk := sock.recv(4096)):
                    no_body += chunk
            results = [f.result() for f in futs]
        assert (status, body["code"]) == (503, "queue_full")
        assert no_body.startswith(b"HTTP/1.1 503") and b"queue_full" in no_body
    codes = sorted(r[0] for r in results)
    assert codes.count(200) >= 4 and codes.count(503) >= 1 and set(codes) <= {200, 503}
    rejected = [r for r in results if r[0] == 503]
    assert all(r[2].get("retry-after") == "1" and r[1]["code"] == "queue_full" for r in rejected)


def test_sigterm_drains_in_flight_requests(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--max-queue-delay-ms", "700", "--max-batch-size", "64") as c:
        c.call("POST", "/models/register", {"model_id": MLP})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(c.call, "POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
                    for _ in range(8)]
            time.sleep(0.3)  # the requests now wait in the batch window
            c.proc.send_signal(signal.SIGTERM)
            codes = [f.result()[0] for f in futs]
        # uvicorn re-raises the signal once drained: a clean SIGTERM exit, as systemd expects.
        assert c.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert codes == [200] * 8


def test_request_body_limit(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--max-body-bytes", "1000", "--no-intra-op-spinning",
                     "--intra-op-threads", "1") as c:
        c.call("POST", "/models/register", {"model_id": MLP})
        big = b'{"inputs": {"x": [' + b"[1,2,3,4]," * 200 + b"[1,2,3,4]]}}"
        status, body, _ = c.call("POST", f"/models/{MLP}/inference", raw=big)
        assert status == 413 and body["code"] == "body_too_large"
        # the same server (started without spinning, one intra-op thread) still serves normal bodies
        status, body, _ = c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
        assert status == 200 and np.allclose(body["outputs"]["y"]["data"], mlp_reference(np.asarray([[1, 2, 3, 4]])))
        # chunked bodies (no Content-Length) arrive in several pieces: counted as they come
        host, port = c.url.removeprefix("http://").split(":")
        url = f"/models/{MLP}/inference"
        assert _post_chunked(host, int(port), url, [big[i:i + 100] for i in range(0, len(big), 100)])[0] == 413
        small = b'{"inputs": {"x": [[1, 2, 3, 4]]}}'
        status, body = _post_chunked(host, int(port), url, [small[:10], small[10:20], small[20:]])
        assert status == 200 and np.allclose(body["outputs"]["y"]["data"], mlp_reference(np.asarray([[1, 2, 3, 4]])))
        # a client that hangs up halfway through its body gets no answer and breaks nothing
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /models/{MLP}/inference HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
                         .encode() + small[:10])
        time.sleep(0.2)
        assert c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0] == 200
    assert "Traceback" not in c.log.read_text()


def _post_chunked(host: str, port: int, path: str, pieces: list[bytes]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", path, body=iter(pieces), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# --- KServe v2 -------------------------------------------------------------------------------------


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


# --- the axon side -----------------------------------------------------------------------------------


def test_axon_register_unregister_and_publish_notify(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx")
    publish_dir_as(settings, MLP, tmp_path / "m")
    env = {**os.environ, "AXON_HOME": str(settings.home), "AXON_CACHE_DIR": str(settings.cache_dir),
           "AXON_PUBLISH_DIR": str(settings.publish_dir)}

    def axon(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "axon", *args], capture_output=True, text=True,
                              env={**env, **extra}, check=False)

    r = axon("register", MLP, MLOS_CORE_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 1 and "not reachable" in r.stderr
    with core_server(settings.publish_dir, tmp_path) as c:
        r = axon("register", MLP, MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 0 and "Registered demo/mlp@1 on CPUExecutionProvider" in r.stdout, r.stderr
        r = axon("register", MLP, MLOS_CORE_ENDPOINT=c.url, MLOS_CORE_TOKEN="bad")
        assert r.returncode == 4
        r = axon("unregister", MLP, MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 0
        write_mlp(tmp_path / "m2" / "model.onnx", seed=9)
        r = axon("install", "demo/mlp@2", "--from", str(tmp_path / "m2"))
        assert r.returncode == 0
        r = axon("publish", "demo/mlp@2", "--notify", MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 0 and "MLOS Core notified" in r.stdout, r.stderr
        assert [m["model_id"] for m in c.call("GET", "/models")[1]["models"]] == ["demo/mlp@2"]
    r = axon("publish", "demo/mlp@2", "--notify", MLOS_CORE_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 0 and "could not notify MLOS Core" in r.stderr and "axon register demo/mlp@2" in r.stderr


def test_concurrency_is_thread_safe_under_reload(core: Core, published: tuple[Settings, Path]) -> None:
    """Re-registering while clients hammer the model drops no request."""
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        while not stop.is_set():
            codes.append(core.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    status, _, _ = core.call("POST", "/models/register", {"model_id": MLP})
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert status == 200 and codes and set(codes) == {200}


def test_several_worker_processes_share_registrations(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--workers", "2") as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] in (200, 201)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # connections land on both workers
            codes = list(pool.map(lambda _: c.call("POST", f"/models/{MLP}/inference",
                                                   {"inputs": {"x": [[1, 2, 3, 4]]}})[0], range(60)))
        assert set(codes) == {200}
        assert c.call("DELETE", f"/models/{MLP}")[0] == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every worker follows the registrations file
            codes = [c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0]
                     for _ in range(10)]
            if set(codes) == {404}:
                break
            time.sleep(0.2)
        assert set(codes) == {404}


def test_bad_server_options_exit_2(tmp_path: Path) -> None:
    for args in (["--precision", "fp16", "--device", "cpu"], ["--device", "tpu"]):
        proc = subprocess.run([sys.executable, "-m", "mlos_core", "serve", "--repository", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr


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


def test_mixed_hostile_traffic_breaks_nothing(published: tuple[Settings, Path], tmp_path: Path) -> None:
    """Good requests, malformed ones, oversized bodies, chunked bodies, binary KServe tensors and
    clients hanging up mid-body, all at once against a small queue: every answer is one the kind
    of request allows, and the server logs no traceback."""
    settings, _ = published
    allowed = {"good": {200, 503}, "text": {200, 503}, "bad": {400, 503}, "big": {413, 503},
               "chunked": {200, 503}, "kserve_binary": {200, 503}, "get": {405}}
    small = json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode()
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 16}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    seen: dict[str, set[int]] = {}
    lock = threading.Lock()
    with core_server(settings.publish_dir, tmp_path, "--max-body-bytes", "20000", "--max-queue-size", "4",
                     "--max-batch-size", "8") as c:
        for spec in (MLP, TEXT):
            assert c.call("POST", "/models/register", {"model_id": spec})[0] == 201
        host, port = c.url.removeprefix("http://").split(":")
        stop = time.monotonic() + 3

        def client(seed: int) -> None:
            kinds = [*allowed, "gone"]
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            i = seed
            while time.monotonic() < stop:
                kind = kinds[i % len(kinds)]
                i += 1
                if kind == "gone":
                    with socket.create_connection((host, int(port)), timeout=10) as sock:
                        sock.sendall(f"POST /models/{MLP}/inference HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
                                     .encode() + small[:5])
                    continue
                if kind == "get":
                    conn.request("GET", f"/models/{MLP}/inference")
                elif kind == "chunked":
                    conn.request("POST", f"/models/{MLP}/inference", body=iter([small[:7], small[7:]]),
                                 encode_chunked=True)
                elif kind == "kserve_binary":
                    tensor = np.arange(1, 5, dtype="<f4").tobytes()
                    conn.request("POST", "/v2/models/demo/mlp/infer", body=head + tensor,
                                 headers={"Inference-Header-Content-Length": str(len(head))})
                else:
                    body = {"good": small, "text": json.dumps({"input": ["hello world", "mlos"]}).encode(),
                            "bad": b"{nope", "big": b'{"inputs": {"x": [' + b"[1,2,3,4]," * 3000 + b"[1,2,3,4]]}}"}
                    conn.request("POST", f"/models/{TEXT if kind == 'text' else MLP}/inference", body=body[kind],
                                 headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    seen.setdefault(kind, set()).add(resp.status)
                if resp.getheader("connection") == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0] == 200
    assert set(seen) == set(allowed)
    assert all(seen[k] <= allowed[k] for k in seen), seen
    assert all(200 in seen[k] for k in ("good", "text", "chunked", "kserve_binary")), seen
    assert "Traceback" not in c.log.read_text()
