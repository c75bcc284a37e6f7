"""Admin calls need the token; axon register/unregister/publish --notify drive them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from axon.demo import sandbox_settings
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.onnx_models import write_mlp
from tests.support.served import MLP


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_admin_calls_need_the_token(core: Core, token: str | None) -> None:
    status, body, _ = core.call("POST", "/models/register", {"model_id": MLP}, token=token)
    assert status == 401 and body["status"] == "error" and "Bearer" in body["message"]
    status, _, _ = core.call("DELETE", f"/models/{MLP}", token=token)
    assert status == 401
    status, body, _ = core.call("POST", "/models/register", {"model_id": MLP})
    assert status == 200 and body["status"] == "unchanged"


def test_axon_register_unregister_and_publish_notify(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx")
    publish_dir_as(settings, MLP, tmp_path / "m")
    env = {**os.environ, "AXON_HOME": str(settings.home), "AXON_CACHE_DIR": str(settings.cache_dir),
           "AXON_PUBLISH_DIR": str(settings.publish_dir)}

    def axon(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "axon", *args], capture_output=True, text=True,
                              env={**env, **extra}, check=False)

    r = axon("register", MLP, MLOS_CORE_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 1 and "not reachable" in r.stderr
    with core_server(settings.publish_dir, tmp_path) as c:
        r = axon("register", MLP, MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 0 and "Registered demo/mlp@1 on CPUExecutionProvider" in r.stdout, r.stderr
        r = axon("register", MLP, MLOS_CORE_ENDPOINT=c.url, MLOS_CORE_TOKEN="bad")
        assert r.returncode == 4
        r = axon("unregister", MLP, MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 0
        r = axon("register", MLP, "--digest", "0" * 32, MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 3 and "not the pinned" in r.stderr and "axon published" in r.stderr, r.stderr
        r = axon("register", MLP, "--digest", "sha256:short", MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 2 and "is not a digest" in r.stderr, r.stderr
        write_mlp(tmp_path / "m2" / "model.onnx", seed=9)
        r = axon("install", "demo/mlp@2", "--from", str(tmp_path / "m2"))
        assert r.returncode == 0
        r = axon("publish", "demo/mlp@2", "--notify", MLOS_CORE_ENDPOINT=c.url)
        assert r.returncode == 0 and "MLOS Core notified" in r.stdout, r.stderr
        assert [m["model_id"] for m in c.call("GET", "/models")[1]["models"]] == ["demo/mlp@2"]
    r = axon("publish", "demo/mlp@2", "--notify", MLOS_CORE_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 0 and "could not notify MLOS Core" in r.stderr and "axon register demo/mlp@2" in r.stderr
