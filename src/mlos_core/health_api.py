"""Health and telemetry: ``GET /health`` (alive, version, uptime), ``GET /ready`` (503 while a
registered model failed to load), ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mlos_core import __version__
from mlos_core.registry import Registry
from mlos_core.settings import ServerSettings
from mlos_core.telemetry import Metrics
from mlos_core.wire import JSONResponse

__all__ = ["routes"]


def routes(settings: ServerSettings, registry: Registry, metrics: Metrics,
           render: Callable[[], Awaitable[str]]) -> list[Route]:
    """*render*: the Prometheus text ``/metrics`` answers (this worker's, or every worker's)."""
    started = time.time()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "healthy", "version": __version__, "uptime_s": round(time.time() - started, 1),
                             "models": len(registry.models), "repository": str(settings.repository)})

    async def ready(request: Request) -> Response:
        ok = not registry.failed
        return JSONResponse({"ready": ok, "models": sorted(registry.models), "failed": registry.failed},
                            status_code=200 if ok else 503)

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(await render(), media_type="text/plain; version=0.0.4")

    metrics.gauges["mlos_queue_depth"] = lambda: {f'{{model="{k}"}}': m.batcher.depth
                                                  for k, m in registry.models.items()}
    metrics.gauges["mlos_models_loaded"] = lambda: {"": len(registry.models)}
    metrics.gauges["mlos_model_int8"] = lambda: {f'{{model="{k}"}}': float(m.precision.served == "int8")
                                                 for k, m in registry.models.items()
                                                 if m.precision.requested == "int8"}
    metrics.gauges["mlos_model_int8_cosine"] = lambda: {f'{{model="{k}"}}': m.precision.cosine
                                                        for k, m in registry.models.items()
                                                        if m.precision.cosine is not None}
    return [Route("/health", health), Route("/ready", ready), Route("/metrics", metrics_route)]
