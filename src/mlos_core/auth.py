"""Admin bearer token: created on first start (0640, the repository's group), compared in constant time."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from starlette.requests import Request

from axon.atomic import atomic_write_text
from mlos_core.errors import ApiError

__all__ = ["load_or_create_token", "require_admin"]

log = logging.getLogger("mlos_core.auth")


def load_or_create_token(path: Path, repository: Path) -> str:
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise RuntimeError(f"token file {path} is empty")
        mode = path.stat().st_mode & 0o777
        if mode & 0o007:
            log.warning("token file %s is readable by others (mode %o); chmod 640 it", path, mode)
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    atomic_write_text(path, token + "\n", mode=0o640)
    try:
        os.chown(path, -1, repository.stat().st_gid)  # readable by root and the publish group only
    except OSError as exc:
        log.warning("could not give token file %s the repository's group: %s", path, exc)
    log.info("created admin token file %s", path)
    return token


def require_admin(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "admin call: send 'Authorization: Bearer <token>' (the token file is "
                       "readable by root and the publish group)", headers={"WWW-Authenticate": "Bearer"})
