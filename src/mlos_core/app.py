"""``create_app(settings)``: the server assembled from its parts, and the lifespan that restores
registrations at start and drains the batchers at shutdown.

The inference routes are answered by the plain-ASGI :class:`~mlos_core.fastpath.FastPath` in front;
everything else goes to the Starlette app behind it. Every error, on either path, is rendered by
:func:`mlos_core.errors.render_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlos_core import __version__, admin_api, health_api, kserve, native_api, openai_api, rerank_api
from mlos_core.admin_api import AdminAuth
from mlos_core.errors import ApiError, api_error_handler, error_response
from mlos_core.fastpath import FastPath
from mlos_core.parse_helper import LargeBodies
from mlos_core.registry import Registry
from mlos_core.service import InferenceService
from mlos_core.settings import PATH_KEYS, ServerSettings
from mlos_core.telemetry import Metrics, MetricsSink
from mlos_core.worker_metrics import ENV as METRICS_DIR_ENV
from mlos_core.worker_metrics import SharedMetrics

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger("mlos_core.app")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (no route, wrong method), in the API's error shape."""
    status = getattr(exc, "status_code", 500)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    return error_response(status, code, str(getattr(exc, "detail", "")) or code.replace("_", " "))


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # nobody is there to read it; uvicorn drops it


def create_app(settings: ServerSettings, *, metrics_dir: Path | None = None,
               metrics_sink: MetricsSink | None = None) -> FastPath:
    """The server. *metrics_dir*: the directory this run's workers share their metrics in
    (:mod:`mlos_core.worker_metrics`), so that any worker's ``/metrics`` counts them all.
    *metrics_sink*: where every observation goes too (a Ray Serve replica: Ray's metrics)."""
    metrics = Metrics(metrics_sink)
    shared = SharedMetrics(metrics, metrics_dir) if metrics_dir is not None else None
    registry = Registry(settings, metrics)
    service = InferenceService(settings, registry, metrics, LargeBodies())
    admin = AdminAuth(settings)

    refused = asyncio.Event()  # the lifespan refused to start and logged why, in one line

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(admin.load)
        await registry.restore()
        if settings.require_models and registry.failed:  # a replica that cannot serve its models never starts
            why = "models failed to load: " + "; ".join(f"{k}: {v}" for k, v in registry.failed.items())
            log.error("%s", why)  # the engine reports the start failed; its replica log says why
            refused.set()
            raise RuntimeError(why)
        log.info("MLOS Core %s: repository %s, %d model(s) restored", __version__, settings.repository,
                 len(registry.models))
        follow = settings.workers > 1 or settings.deployment is not None  # other workers, or the deployment file
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(registry.watch_state()) if follow else None
        publisher = loop.create_task(shared.run()) if shared is not None else None
        yield
        tasks = [t for t in (watcher, publisher) if t is not None]
        for task in tasks:
            task.cancel()
        for task, outcome in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
            if isinstance(outcome, Exception):  # it died before the shutdown: say so, and shut down all the same
                log.error("background task %s had stopped: %s: %s", task.get_coro(), type(outcome).__name__, outcome)
        await registry.close()  # SIGTERM: uvicorn stops accepting, in-flight requests finish, then this
        service.large_bodies.close()

    routes = [
        *health_api.routes(settings, registry, metrics, shared.render if shared is not None else _rendered(metrics)),
        *admin_api.routes(registry, admin),  # before native_api's /models/{rest:path}
        *native_api.routes(service, admin),
        *kserve.routes(service, admin),
        *openai_api.routes(registry),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, ApiError: api_error_handler,
                                        ClientDisconnect: _client_gone, Exception: api_error_handler})
    fast_routes = [*native_api.fast_routes(service), *kserve.fast_routes(service),
                   *openai_api.fast_routes(service), *rerank_api.fast_routes(service)]
    fast = FastPath(_without_refusal_traceback(app, refused), fast_routes, settings.max_body_bytes)
    fast.registry = registry  # what an engine's health check asks (mlos_core.ray_serve)
    return fast


def _rendered(metrics: Metrics) -> Callable[[], Awaitable[str]]:
    async def render() -> str:
        return metrics.render()

    return render


def _without_refusal_traceback(app: ASGIApp, refused: asyncio.Event) -> ASGIApp:
    """*app*, but when its lifespan refused to start (and logged the reason), the traceback Starlette
    attaches to ``lifespan.startup.failed`` is left out: uvicorn would print it after the reason."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def send_lifespan(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and refused.is_set():
                message = {**message, "message": ""}
            await send(message)

        await app(scope, receive, send_lifespan)

    return call


def create_app_from_env() -> FastPath:
    """Factory for uvicorn's worker processes: settings arrive as JSON in MLOS_CORE_SETTINGS."""
    raw = json.loads(os.environ["MLOS_CORE_SETTINGS"])
    for key in PATH_KEYS:
        if raw.get(key):
            raw[key] = Path(raw[key])
    metrics_dir = os.environ.get(METRICS_DIR_ENV)
    return create_app(ServerSettings(**raw), metrics_dir=Path(metrics_dir) if metrics_dir else None)
