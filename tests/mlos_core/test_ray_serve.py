"""MLOS Core on a real Ray Serve (the session's simulated cluster, ``ray_fleet``): two replicas
answer as local onnxruntime does, through the native API and tritonclient; 400, 404, 413 and
503 come through Ray's proxy as a bare server gives them; each replica's counts reach Ray's
metrics, labelled per replica; a rollout to a model pinned to a digest it is not published with
fails with our reason, and the old replicas keep answering, with zero failed requests under
steady traffic."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from axon.demo import sandbox_settings
from axon.store.deployment import Deployment
from axon.store.manifest import manifest_digest_of
from axon.store.spec import parse_spec
from mlos_core.settings import ServerSettings
from tests.support.core_server import publish_dir_as
from tests.support.onnx_models import mlp_model, write_mlp
from tests.support.ray_fleet import RayFleet

ray = pytest.importorskip("ray")
# Ray's own modules use pydantic and asyncio APIs their newer versions deprecate: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning",
                                        "ignore::pytest.PytestUnraisableExceptionWarning")
MLP = "demo/mlp@1"
X = [[1.0, 2.0, 3.0, 4.0]]


def reference(seed: int) -> Any:
    sess = ort.InferenceSession(mlp_model(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(X, np.float32)})[0]


@pytest.fixture
def ray_url(ray_fleet: RayFleet) -> str:
    return ray_fleet.url


def infer(url: str, *, model: str = MLP, x: Any = X) -> tuple[int, Any]:
    return infer_with_headers(url, model=model, x=x)[:2]


def infer_with_headers(url: str, *, model: str = MLP, x: Any = X) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(f"{url}/models/{model}/inference", data=json.dumps({"inputs": {"x": x}}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def test_replicas_serve_their_pinned_model_and_a_bad_rollout_changes_nothing(ray_fleet: RayFleet, ray_url: str,
                                                                             tmp_path: Path) -> None:
    from mlos_core import ray_serve

    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx", seed=1)
    pin = manifest_digest_of((publish_dir_as(settings, MLP, tmp_path / "m") / "manifest.yaml").read_bytes())
    server = ServerSettings(repository=settings.publish_dir, device="cpu", state_dir=tmp_path / "state",
                            max_body_bytes=1 << 16)
    good = Deployment(str(settings.publish_dir), replicas=2).with_model(parse_spec(MLP), pin)
    result = ray_serve.deploy(server, good, num_cpus=0.5, timeout_s=300)
    assert result["status"] == "RUNNING" and result["replicas"].get("RUNNING") == 2, result

    status, answer = infer(ray_url)
    assert status == 200, answer
    np.testing.assert_allclose(np.asarray(answer["outputs"]["y"]["data"]), reference(1), rtol=1e-6)
    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(ray_url.removeprefix("http://"))
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.asarray(X, np.float32))
    out = triton.infer("demo/mlp", [inp], model_version="1").as_numpy("y")
    np.testing.assert_allclose(out, reference(1), rtol=1e-6)
    assert infer(ray_url.replace(MLP, MLP))[0] == 200
    req = urllib.request.Request(f"{ray_url}/models/{MLP}/inference", data=b"{not json", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    unknown = infer(ray_url, model="demo/none@1")
    assert unknown[0] == 404 and unknown[1]["code"] == "model_not_found", unknown  # as on a bare server
    too_big = infer(ray_url, x=[[1.0] * 20_000])
    assert too_big[0] == 413 and too_big[1]["code"] == "body_too_large", too_big
    for _ in range(20):
        assert infer(ray_url)[0] == 200
    ok_so_far = 23  # 22 native answers and the tritonclient one; the 400 is a failure, not ok
    replicas = {w["replica"] for w in ray_fleet.replicas(2)}

    def ours(name: str) -> dict[frozenset[tuple[str, str]], float]:  # this deployment's replicas, this model
        return {labels: v for labels, v in ray_fleet.metric(name).items()
                if ("model", MLP) in labels and dict(labels).get("replica") in replicas}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Ray exports each replica's metrics once a second here
        ok = {labels: v for labels, v in ours("ray_mlos_requests_total").items() if ("outcome", "ok") in labels}
        if sum(ok.values()) == ok_so_far:
            break
        time.sleep(0.5)
    assert sum(ok.values()) == ok_so_far, ok  # one series per replica, labelled by Ray
    assert all(("deployment", "mlos-core") in labels for labels in ok), ok
    assert sum(ours("ray_mlos_request_duration_seconds_count").values()) == ok_so_far

    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            code, body = infer(ray_url)
            statuses.append(code)
            if code == 200:
                np.testing.assert_allclose(np.asarray(body["outputs"]["y"]["data"]), reference(1), rtol=1e-6)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        bad = Deployment(str(settings.publish_dir), replicas=2).with_model(parse_spec(MLP), "sha256:" + "0" * 64)
        result = ray_serve.deploy(server, bad, num_cpus=0.5, timeout_s=300)
        assert result["status"] in ("DEPLOY_FAILED", "UNHEALTHY"), result
        assert "failed to start" in result["message"], result
        assert result["reason"].startswith("models failed to load: demo/mlp@1: ") and "sha256:0000" in \
            result["reason"], result  # our one line, out of Ray's status: no need to find the replica's log
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert infer(ray_url)[0] == 200  # the old replicas still answer

    # A good rollout under steady traffic: a republished copy pinned anew, replica by replica.
    write_mlp(tmp_path / "m2" / "model.onnx", seed=2)
    pin2 = manifest_digest_of((publish_dir_as(settings, MLP, tmp_path / "m2", force=True) / "manifest.yaml")
                              .read_bytes())
    answers: list[tuple[int, Any]] = []
    stop.clear()

    def traffic_during_rollout() -> None:
        while not stop.is_set():
            answers.append(infer(ray_url))

    thread = threading.Thread(target=traffic_during_rollout)
    thread.start()
    try:
        new = Deployment(str(settings.publish_dir), replicas=2).with_model(parse_spec(MLP), pin2)
        result = ray_serve.deploy(server, new, num_cpus=0.5, timeout_s=300)
        assert result["status"] == "RUNNING", result
    finally:
        stop.set()
        thread.join()
    assert answers and {code for code, _ in answers} == {200}, sorted({code for code, _ in answers})
    old_or_new = [reference(1), reference(2)]
    for _, body in answers:  # every answer is one copy's, whole: the old or the new
        y = np.asarray(body["outputs"]["y"]["data"])
        assert any(np.allclose(y, ref, rtol=1e-6) for ref in old_or_new)
    np.testing.assert_allclose(np.asarray(infer(ray_url)[1]["outputs"]["y"]["data"]), reference(2), rtol=1e-6)

    # Overload is MLOS Core's own 503 with Retry-After, through Ray's proxy unchanged: a short queue
    # that waits 400 ms for a batch to fill, and more concurrent requests than two replicas hold
    # (each admits four: at least four succeed, wherever Ray routes them).
    tight = dataclasses.replace(server, max_queue_size=4, max_queue_delay_ms=400, max_batch_size=64)
    result = ray_serve.deploy(tight, new, num_cpus=0.5, timeout_s=300)
    assert result["status"] == "RUNNING", result
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers3 = list(pool.map(lambda _: infer_with_headers(ray_url), range(24)))
    codes = [code for code, _, _ in answers3]
    assert codes.count(200) >= 4 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
    rejected = [(body, headers) for code, body, headers in answers3 if code == 503]
    assert all(body["code"] == "queue_full" and headers.get("retry-after", headers.get("Retry-After")) == "1"
               for body, headers in rejected), rejected
