"""One simulated multi-node Ray cluster with Ray Serve for the whole test session.

``ray.cluster_utils.Cluster`` runs a real head and real worker nodes here, each its own raylet; a
node's GPUs are Ray resources only. One Ray per test process: a second ``ray.init`` after a
shutdown inherits state the first left (its auth token mode), and its nodes then fail to start.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["RayFleet", "free_port", "ray_fleet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayFleet:
    cluster: Any  # ray.cluster_utils.Cluster
    url: str  # Ray Serve's HTTP proxy, on the head node
    gpu_node: str  # the node id of the node with (simulated) GPUs

    def add_node(self, **args: Any) -> Any:
        return self.cluster.add_node(metrics_export_port=free_port(), **args)

    def replicas(self, n: int, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Where the *n* replicas of the mlos-core application run, asked of the replicas
        themselves (each call reaches one): ``{"node_id", "replica", "gpu_ids"}``."""
        from ray import serve

        handle = serve.get_deployment_handle("mlos-core", "mlos-core")
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < n and time.monotonic() < deadline:
            try:
                where = handle.where.remote().result(timeout_s=10)
            except Exception:  # a replica on a node that just went away: Ray routes around it soon
                time.sleep(0.2)
                continue
            seen[where["replica"]] = where
        return list(seen.values())

    def metric(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """The samples of *name* on every node's Ray metrics endpoint, by their labels."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[frozenset[tuple[str, str]], float] = {}
        for node in self.cluster.list_all_nodes():
            with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=30) as resp:
                text = resp.read().decode()
            for family in text_string_to_metric_families(text):
                out.update({frozenset(s.labels.items()): s.value for s in family.samples if s.name == name})
        return out


@contextmanager
def ray_fleet() -> Iterator[RayFleet]:
    """A head (2 CPUs), a CPU node and a node with 2 GPUs; Serve's proxy on the head only (all
    nodes share this host's ports); metrics reported every second (Ray's default: 10 s)."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "metrics_export_port": free_port(),
        "_system_config": {"metrics_report_interval_ms": 1000}})
    fleet = RayFleet(cluster, "", "")
    fleet.add_node(num_cpus=1)
    fleet.gpu_node = fleet.add_node(num_cpus=1, num_gpus=2).node_id
    port = free_port()
    ray.init(address=cluster.address, log_to_driver=False)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    fleet.url = f"http://127.0.0.1:{port}"
    try:
        yield fleet
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
