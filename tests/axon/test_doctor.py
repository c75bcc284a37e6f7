"""``axon doctor``'s checks as the library runs them, against real paths and a real MLOS Core."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from axon.doctor import run_checks
from axon.settings import Settings
from axon.store.fastio import native_available
from tests.support.core_server import core_server


def by_name(settings: Settings) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in run_checks(settings)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_fresh_machine_gets_hints(settings: Settings) -> None:
    settings = dataclasses.replace(settings, core_endpoint=f"http://127.0.0.1:{closed_port()}")
    checks = by_name(settings)
    assert list(checks)[:3] == ["onnxruntime", "cuda", "native fastio"]
    assert checks["native fastio"]["ok"] is native_available()
    assert checks["dev cache"]["ok"] is True  # not created yet: made on first install
    prod = checks["production repository"]
    assert prod["ok"] is False and "setup-production" in str(prod["hint"]) and "(missing)" in str(prod["detail"])
    core = checks["MLOS Core"]
    assert core["ok"] is False and "mlos-core serve" in str(core["hint"])
    group = checks["publish group"]
    assert group["ok"] is (os.geteuid() == 0)


def test_a_ready_machine_passes(settings: Settings, tmp_path: Path) -> None:
    settings.publish_dir.mkdir(parents=True)
    settings.cache_dir.mkdir(parents=True)
    with core_server(settings.publish_dir, tmp_path) as core:
        checks = by_name(dataclasses.replace(settings, core_endpoint=core.url))
    assert checks["production repository"]["ok"] is True and "mode" in str(checks["production repository"]["detail"])
    assert checks["dev cache"]["ok"] is True
    assert checks["MLOS Core"]["ok"] is True and "healthy, 0 model(s)" in str(checks["MLOS Core"]["detail"])
