"""A real ``mlos-core serve`` process on 127.0.0.1 and a production repository to serve from."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axon.core_process import running_core
from axon.install import install
from axon.publish import publish
from axon.settings import Settings
from axon.store.spec import parse_spec


def publish_dir_as(settings: Settings, spec: str, source: Path, *, force: bool = False) -> Path:
    install(parse_spec(spec), settings, from_=str(source), force=True)
    return publish(parse_spec(spec), settings, force=force).path


@dataclass
class Core:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = "", raw: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        tok = self.token if token == "" else token
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
                status, rh = resp.status, {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            payload, status, rh = exc.read(), exc.code, {k.lower(): v for k, v in exc.headers.items()}
            exc.close()
        try:
            return status, json.loads(payload) if payload else None, rh
        except ValueError:
            return status, payload, rh


@contextmanager
def core_server(repository: Path, tmp_path: Path, *args: str) -> Iterator[Core]:
    """A server on *repository* whose registrations live under *tmp_path* (servers started with the
    same tmp_path restore each other's; other tests' servers on the same repository do not), with
    the admin token where axon looks for it by default."""
    token_file = repository / ".axon" / "core" / "token"
    with running_core(repository, tmp_path, ["--device", "cpu", "--state-dir", str(tmp_path / "core-state"),
                                             "--token-file", str(token_file), *args]) as proc:
        yield Core(proc.url, token_file.read_text().strip(), proc.proc, proc.log)
