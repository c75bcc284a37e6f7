"""MLOS Core on a multi-node Ray cluster, simulated on this host (``ray_fleet``:
a real head and real worker nodes, each its own raylet; a node's GPUs are Ray resources only):
replicas land as the deployment file asks (one per node; on the GPU node, one GPU each), and
a node that leaves under traffic and comes back leaves the service answering."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from axon.demo import sandbox_settings
from axon.store.deployment import Deployment
from axon.store.manifest import manifest_digest_of
from axon.store.spec import parse_spec
from mlos_core.settings import ServerSettings
from tests.support.core_server import publish_dir_as
from tests.support.onnx_models import mlp_outputs, write_mlp
from tests.support.ray_fleet import RayFleet

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning",
                                        "ignore::pytest.PytestUnraisableExceptionWarning")
MLP = "demo/mlp@1"
X = [[1.0, 2.0, 3.0, 4.0]]


@dataclass
class Fleet:
    ray: RayFleet
    server: ServerSettings
    repository: str
    pin: str

    @property
    def url(self) -> str:
        return self.ray.url


@pytest.fixture(scope="module")
def fleet(ray_fleet: RayFleet, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    tmp = tmp_path_factory.mktemp("fleet")
    settings = sandbox_settings(tmp)
    write_mlp(tmp / "m" / "model.onnx", seed=1)
    pin = manifest_digest_of((publish_dir_as(settings, MLP, tmp / "m") / "manifest.yaml").read_bytes())
    return Fleet(ray_fleet, ServerSettings(repository=settings.publish_dir, device="cpu", state_dir=tmp / "state"),
                 str(settings.publish_dir), pin)


def deploy(fleet: Fleet, **scaling: Any) -> None:
    from mlos_core import ray_serve

    deployment = Deployment(fleet.repository, **scaling).with_model(parse_spec(MLP), fleet.pin)
    result = ray_serve.deploy(fleet.server, deployment, num_cpus=0.25, timeout_s=300)
    assert result["status"] == "RUNNING", result


def infer(url: str) -> int:
    req = urllib.request.Request(f"{url}/models/{MLP}/inference", data=json.dumps({"inputs": {"x": X}}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        return getattr(exc, "code", 0)
    np.testing.assert_allclose(np.asarray(body["outputs"]["y"]["data"]), mlp_outputs(np.asarray(X, np.float32),
                                                                                     seed=1), rtol=1e-5)
    return 200


def test_one_replica_per_node_as_the_file_asks(fleet: Fleet) -> None:
    deploy(fleet, replicas=3, max_replicas_per_node=1)
    where = fleet.ray.replicas(3)
    assert len({w["node_id"] for w in where}) == 3, where  # three nodes, one replica on each
    assert all(w["gpu_ids"] == [] for w in where), where  # no GPU asked, none given
    assert infer(fleet.url) == 200


def test_gpu_replicas_land_on_the_gpu_node_one_gpu_each(fleet: Fleet) -> None:
    deploy(fleet, replicas=2, gpus=1)
    where = fleet.ray.replicas(2)
    assert {w["node_id"] for w in where} == {fleet.ray.gpu_node}, where
    assert sorted(g for w in where for g in w["gpu_ids"]) == ["0", "1"], where  # each its own GPU
    assert infer(fleet.url) == 200


def test_a_node_leaving_and_coming_back_under_traffic(fleet: Fleet) -> None:
    from mlos_core import ray_serve

    deploy(fleet, replicas=2, max_replicas_per_node=1)
    head = fleet.ray.cluster.head_node.node_id
    away = next(n for n in fleet.ray.cluster.worker_nodes
                if n.node_id in {w["node_id"] for w in fleet.ray.replicas(2)} and n.node_id != head)
    codes: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():  # steady, not flat out: two cores also run four raylets and the replicas
            codes.append((time.monotonic(), infer(fleet.url)))
            stop.wait(0.05)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1)
        left = time.monotonic()
        fleet.ray.cluster.remove_node(away)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # Ray replaces the lost replica on a node that is still there
            nodes = {w["node_id"] for w in fleet.ray.replicas(2, timeout_s=5)}
            if len(nodes) == 2 and away.node_id not in nodes:
                break
        replaced = time.monotonic()
        assert len(nodes) == 2 and away.node_id not in nodes, nodes
        back = fleet.ray.add_node(num_cpus=1, num_gpus=2 if away.node_id == fleet.ray.gpu_node else 0)
        fleet.ray.cluster.wait_for_nodes()
        if away.node_id == fleet.ray.gpu_node:
            fleet.ray.gpu_node = back.node_id
        assert ray_serve.status()["replicas"].get("RUNNING") == 2, ray_serve.status()
    finally:
        stop.set()
        thread.join()
    during = [c for t, c in codes if left <= t < replaced]
    assert during.count(200) > 0, codes  # it kept answering while Ray replaced the lost replica
    assert len(during) - during.count(200) <= 1, during  # at most the one request in flight there (measured: 0)
    assert {infer(fleet.url) for _ in range(20)} == {200}  # and answers now, the node back in the cluster
    assert back.node_id != away.node_id
