"""Admin calls: ``POST /models/register`` and ``DELETE /models/{id}`` (KServe's repository
extension uses the same guard), each with ``Authorization: Bearer <token>``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from axon.store.pin import PIN_FORMS, is_pin
from mlos_core.auth import load_or_create_token, require_admin
from mlos_core.errors import ApiError
from mlos_core.registry import Registry
from mlos_core.settings import ServerSettings
from mlos_core.wire import JSONResponse, read_json

__all__ = ["AdminAuth", "routes", "unregister"]


class AdminAuth:
    """The admin token (loaded, or created, when the server starts) and the check against it."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.token: str | None = None

    def load(self) -> None:
        self.token = load_or_create_token(self.settings.token_file, self.settings.token_group_source)

    def require(self, request: Request) -> None:
        if self.token is None:
            raise ApiError(503, "starting", "the server is still starting; retry shortly", headers={"Retry-After": "1"})
        require_admin(request, self.token)


async def unregister(request: Request, admin: AdminAuth, registry: Registry, model_id: str) -> Response:
    admin.require(request)
    return JSONResponse(await registry.unregister(model_id))


def routes(registry: Registry, admin: AdminAuth) -> list[Route]:
    async def register(request: Request) -> Response:
        admin.require(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object: {'model_id': 'ns/name@version'} or "
                           "{'manifest_path': '...'}")
        model_id = body.get("model_id")
        paths = [(k, body[k]) for k in ("manifest_path", "path", "model_path") if body.get(k) is not None]
        for key, value in [("model_id", model_id), *paths]:
            if value is not None and not isinstance(value, str):
                raise ApiError(400, "bad_request", f"{key!r} must be a string")
        path = next((v for _, v in paths if v), None)
        digest = body.get("digest")
        if digest is not None and not is_pin(digest):
            raise ApiError(400, "bad_request", f"'digest' must be {PIN_FORMS}, as axon published shows them")
        result = await registry.register(model_id=model_id, manifest_path=path, digest=digest)
        return JSONResponse(result, status_code=201 if result["status"] == "registered" else 200)

    return [Route("/models/register", register, methods=["POST"])]
