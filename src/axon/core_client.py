"""Client for the MLOS Core HTTP API (register/unregister); server errors become typed errors."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from axon.errors import AxonError, PermissionDeniedError, UsageError
from axon.settings import Settings
from axon.store.cache_dir import DEFAULT_CACHE_DIR
from axon.store.spec import ModelSpec

__all__ = ["CoreClient", "CoreUnavailableError", "default_token_file"]

TIMEOUT_S = 60.0


class CoreUnavailableError(AxonError):
    """MLOS Core did not answer at core_endpoint."""


def default_token_file(settings: Settings) -> Path:
    """Where the server keeps its admin token unless overridden: ``<publish_dir>/.axon/core/token``,
    or for an s3:// repository under the serving host's default cache directory (the server's
    repository then)."""
    env = os.environ.get("MLOS_CORE_TOKEN_FILE")
    if env:
        return Path(env)
    root = DEFAULT_CACHE_DIR if settings.publish_store is not None else settings.publish_dir
    return root / ".axon" / "core" / "token"


class CoreClient:
    def __init__(self, settings: Settings, *, token: str | None = None, token_file: Path | None = None) -> None:
        self.endpoint = settings.core_endpoint.rstrip("/")
        self.settings = settings
        self._token = token
        self._token_file = token_file

    def token(self) -> str:
        if self._token:
            return self._token
        env = os.environ.get("MLOS_CORE_TOKEN")
        if env:
            return env
        path = self._token_file or default_token_file(self.settings)
        try:
            return path.read_text().strip()
        except PermissionError:
            raise PermissionDeniedError(
                f"Cannot read the MLOS Core admin token {str(path)!r}: it is readable by root and group "
                f"{self.settings.publish_group!r} only.",
                hint=f"Run as a member of {self.settings.publish_group!r}, or set MLOS_CORE_TOKEN.") from None
        except FileNotFoundError:
            raise AxonError(f"No MLOS Core admin token at {str(path)!r}.",
                            hint="Start the server once (mlos-core serve creates it), or set MLOS_CORE_TOKEN / "
                            "MLOS_CORE_TOKEN_FILE.") from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, admin: bool = False,
                timeout: float = TIMEOUT_S) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if admin:
            try:
                token = self.token()
            except AxonError:
                self.health()  # an unreachable server is the more useful thing to report
                raise
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
                return json.loads(payload) if payload else {}
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read() or b"{}")
            except ValueError:
                err = {}
            finally:
                exc.close()
            raise _typed_error(exc.code, err, self.endpoint) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CoreUnavailableError(
                f"MLOS Core is not reachable at {self.endpoint} ({reason}).",
                hint="Start it with: mlos-core serve (or set core_endpoint / MLOS_CORE_ENDPOINT).") from None

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health", timeout=5)

    def register(self, spec: ModelSpec, *, digest: str | None = None) -> dict[str, Any]:
        body = {"model_id": str(spec), **({"digest": digest} if digest is not None else {})}
        return self.request("POST", "/models/register", body, admin=True)

    def unregister(self, spec: ModelSpec) -> dict[str, Any]:
        quoted = urllib.parse.quote(f"{spec.namespace}/{spec.name}@{spec.version}", safe="/@")
        return self.request("DELETE", f"/models/{quoted}", admin=True)

    def models(self) -> dict[str, Any]:
        return self.request("GET", "/models")

    def infer(self, spec: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        quoted = urllib.parse.quote(f"{spec.namespace}/{spec.name}@{spec.version}", safe="/@")
        return self.request("POST", f"/models/{quoted}/inference", body)


def _typed_error(status: int, err: dict[str, Any], endpoint: str) -> AxonError:
    message = str(err.get("message") or f"HTTP {status}")
    code = err.get("code")
    text = f"MLOS Core refused the request: {message}"
    if status == 401:
        return PermissionDeniedError(text, hint="Check the admin token (MLOS_CORE_TOKEN or the token file).")
    if status == 403 or code == "outside_repository":
        return PermissionDeniedError(text)
    if status == 404:
        return AxonError(text, hint="Publish it first (axon publish SPEC), then register it.")
    if status == 409 or code == "integrity":
        from axon.errors import IntegrityError

        if code == "digest_mismatch":
            return IntegrityError(text, hint="See the digest published now: axon published")
        return IntegrityError(text, hint="Verify the published copy: axon verify --published SPEC")
    if 400 <= status < 500:
        return UsageError(text)
    return AxonError(text, hint=f"See the server log ({endpoint}).")
