"""A real ``mlos-core serve`` process on 127.0.0.1 and a production repository to serve from."""

from __future__ import annotations

import grp
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axon.install import install
from axon.publish import publish
from axon.settings import Settings, set_config_value
from axon.spec import parse_spec


def repo_settings(tmp_path: Path) -> Settings:
    env = {"AXON_HOME": str(tmp_path / "axhome"), "AXON_CACHE_DIR": str(tmp_path / "cache"),
           "AXON_PUBLISH_DIR": str(tmp_path / "repo"), "HOME": str(tmp_path / "home")}
    settings = Settings.from_env(env)
    set_config_value(settings.config_file, "publish_group", grp.getgrgid(os.getegid()).gr_name)
    settings = Settings.from_env(env)
    settings.publish_dir.mkdir(parents=True, exist_ok=True)
    return settings


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
    port_file = tmp_path / f"port-{time.monotonic_ns()}"
    log = tmp_path / f"core-{time.monotonic_ns()}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "mlos_core", "serve", "--repository", str(repository),
                                 "--port", "0", "--port-file", str(port_file), "--device", "cpu", *args],
                                stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlos-core did not start:\n{log.read_text()}")
            time.sleep(0.05)
        token = (repository / ".axon" / "core" / "token").read_text().strip()
        yield Core(f"http://127.0.0.1:{port_file.read_text()}", token, proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
