"""MLOS Core on Ray Serve: one Ray Serve application whose replicas each run this server.

Ray does what it is good at (replicas, placement on GPUs, autoscaling, health checks, rolling
updates); every replica is the unchanged ASGI app (``create_app``), verifying its models itself:

* the replica gets the deployment document (``mlos-deploy.yaml``'s content) and registers every
  model, pinned to its digest, while it starts; a replica whose models do not all load (missing,
  damaged, published with another digest) fails Ray's initial health check, so it never gets a
  request, a rollout to a bad model never replaces the replicas that serve the old one, and Ray
  reports the application failed with our reason (``status()["reason"]``);
* ``check_health`` fails while a model is failed, so Ray stops routing to that replica and
  replaces it;
* changing the file and running ``mlos-core serve --ray`` again is Ray's own in-place update
  (a new version rolled out replica by replica); overload is MLOS Core's own 503 with
  Retry-After, passed through by Ray's proxy;
* every replica's counters and histograms also go into Ray's own metrics (:class:`RayServeMetrics`),
  labelled per replica by Ray and exported on each node's metrics port with Ray Serve's own.

Ray is an optional extra (``pip install 'axon-mlos[ray]'``), imported only here.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from axon.errors import UsageError
from axon.store.deployment import Deployment, dump_deployment
from mlos_core.settings import ServerSettings

__all__ = ["APP_NAME", "FAILED_MARK", "RayServeMetrics", "application", "deploy", "failed_reason", "replica_settings",
           "serve_module", "serve_options", "status"]

APP_NAME = "mlos-core"
FAILED_MARK = "models failed to load: "  # begins check_health's error: found again in Ray's status message
_REPLICA: dict[str, Any] = {}  # in each replica process: its app, for check_health


def serve_module() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise UsageError("mlos-core serve --ray needs Ray Serve, which is not installed.",
                         hint="pip install 'axon-mlos[ray]'") from None
    return serve


def serve_options(deployment: Deployment) -> dict[str, Any]:
    """The Ray Serve deployment options the file's scaling and Ray settings say."""
    ray = deployment.ray
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": 1, "num_gpus": deployment.gpus},
        "health_check_period_s": ray.health_check_period_s,
        "health_check_timeout_s": ray.health_check_timeout_s,
        "max_ongoing_requests": ray.max_ongoing_requests,
        "graceful_shutdown_timeout_s": 30,
    }
    if deployment.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = deployment.max_replicas_per_node
    if deployment.autoscale is not None:
        a = deployment.autoscale
        options["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                         "target_ongoing_requests": a.target_ongoing_requests}
    else:
        options["num_replicas"] = deployment.replicas
    return options


def replica_settings(settings: ServerSettings, deployment: Deployment) -> ServerSettings:
    """What each replica runs with: the deployment's document (not its file, which other hosts
    may not have), one worker (Ray makes the replicas). A model that does not load does not stop
    the server's own start here: Ray's initial health check (``check_health``, before the replica
    gets any request) refuses it, and Ray puts that check's error, our reason, in its status."""
    return dataclasses.replace(settings, deployment=None, deployment_doc=dump_deployment(deployment),
                               require_models=False, workers=1)


def application(settings: ServerSettings, deployment: Deployment, *, num_cpus: float | None = None) -> Any:
    """The Ray Serve application (bound, ready for ``serve.run``)."""
    serve = serve_module()
    from mlos_core.app import create_app

    replica = replica_settings(settings, deployment)
    options = serve_options(deployment)
    if num_cpus is not None:
        options["ray_actor_options"]["num_cpus"] = num_cpus

    def build() -> Any:  # runs in each replica (a plain function: Ray calls it there)
        app = create_app(replica, metrics_sink=RayServeMetrics())
        _REPLICA["app"] = app
        return app

    @serve.deployment(name="mlos-core", **options)
    @serve.ingress(build)
    class MLOSCore:
        def where(self) -> dict[str, Any]:
            """Where this replica runs, as Ray placed it: its node, its id, the GPUs Ray gave it
            (``serve.get_deployment_handle("mlos-core", "mlos-core").where.remote()``)."""
            import ray

            return {"node_id": ray.get_runtime_context().get_node_id(),
                    "replica": serve.get_replica_context().replica_id.unique_id,
                    "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

        def check_health(self) -> None:
            app = _REPLICA.get("app")
            failed = getattr(getattr(app, "registry", None), "failed", None)
            if failed is None:
                raise RuntimeError("the server has not started")
            if failed:
                raise RuntimeError(FAILED_MARK + "; ".join(f"{k}: {v}" for k, v in failed.items()))

    return MLOSCore.bind()  # type: ignore[attr-defined]  # serve.deployment made it a Deployment


class RayServeMetrics:
    """Every observation of a replica, also in Ray Serve's own metrics (``ray.serve.metrics``):
    Ray adds the ``replica``, ``deployment`` and ``application`` labels and exports them, with
    its own, on each node's metrics port, prefixed ``ray_`` (``ray_mlos_requests_total``…)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        from mlos_core.telemetry import HISTOGRAM_BUCKETS, HISTOGRAMS

        by_outcome: Any = ("model", "outcome")  # Ray annotates tag_keys as Tuple[str] (meaning any length)
        by_reason: Any = ("model", "reason")
        self._requests = metrics.Counter("mlos_requests_total", description="Inference requests by model and "
                                         "outcome.", tag_keys=by_outcome)
        self._failures = metrics.Counter("mlos_request_failures_total", description="Failed requests by model "
                                         "and reason.", tag_keys=by_reason)
        self._hist = {name: metrics.Histogram(name, description=text, tag_keys=("model",),
                                              boundaries=list(HISTOGRAM_BUCKETS[name]))
                      for name, text in HISTOGRAMS.items()}

    def request(self, model: str, outcome: str, reason: str | None, latency_s: float | None) -> None:
        self._requests.inc(1, tags={"model": model, "outcome": outcome})
        if reason:
            self._failures.inc(1, tags={"model": model, "reason": reason})
        if latency_s is not None:
            self._hist["mlos_request_duration_seconds"].observe(latency_s, tags={"model": model})

    def batch(self, model: str, size: int, compute_s: float) -> None:
        self._hist["mlos_batch_size"].observe(size, tags={"model": model})
        self._hist["mlos_compute_duration_seconds"].observe(compute_s, tags={"model": model})

    def queue_time(self, model: str, seconds: float) -> None:
        self._hist["mlos_queue_duration_seconds"].observe(seconds, tags={"model": model})


def deploy(settings: ServerSettings, deployment: Deployment, *, timeout_s: float = 600,
           num_cpus: float | None = None) -> dict[str, Any]:
    """Deploy (or roll out a change to) the application; returns its status once Ray settles:
    ``RUNNING``, or ``DEPLOY_FAILED``/``UNHEALTHY`` with Ray's message (the old replicas, if any,
    keep serving)."""
    serve = serve_module()
    app = application(settings, deployment, num_cpus=num_cpus)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # Ray raises its own types for a deploy that fails
        return {**status(), "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:500]}"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = status()
        if now["status"] not in ("DEPLOYING", "NOT_STARTED"):
            return now
        time.sleep(0.5)
    return status()


def status() -> dict[str, Any]:
    """The application's status as Ray reports it: status, message, replicas by state."""
    serve = serve_module()
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return {"status": "NOT_STARTED", "message": "", "replicas": {}}
    replicas: dict[str, int] = {}
    messages = [app.message] if app.message else []
    for d in app.deployments.values():
        if d.message:
            messages.append(d.message)
        for state, count in (d.replica_states or {}).items():
            replicas[str(getattr(state, "value", state))] = replicas.get(str(getattr(state, "value", state)), 0) + count
    message = " ".join(messages)
    out: dict[str, Any] = {"status": str(getattr(app.status, "value", app.status)), "message": message[-8000:],
                           "replicas": replicas}
    reason = failed_reason(message)
    if reason:
        out["reason"] = reason
    return out


def failed_reason(message: str) -> str | None:
    """Our replica's own one-line reason inside Ray's status message (which wraps it in Ray's
    traceback of the failed initial health check), if it is there."""
    at = message.rfind(FAILED_MARK)
    if at < 0:
        return None
    return message[at:].splitlines()[0].strip()[:2000]
