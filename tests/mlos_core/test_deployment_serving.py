"""``mlos-core serve --deployment mlos-deploy.yaml``: the served set is the file's, each model
pinned; the server follows the file, refuses admin changes, and reports itself not ready while
a pinned model is missing or published with another digest (what an engine's health check reads)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from axon.demo import sandbox_settings
from axon.store.deployment import Deployment, write_deployment
from axon.store.manifest import manifest_digest_of
from axon.store.spec import parse_spec
from tests.support.core_server import Core, publish_dir_as
from tests.support.onnx_models import mlp_model, write_mlp

X = {"inputs": {"x": [[1, 2, 3, 4]]}}
ONE, TWO = "demo/mlp@1", "demo/mlp@2"


def reference(seed: int) -> Any:
    sess = ort.InferenceSession(mlp_model(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(X["inputs"]["x"], np.float32)})[0]


def wait_until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_a_server_serves_what_its_deployment_file_says(tmp_path: Path) -> None:
    from axon.core_process import running_core

    settings = sandbox_settings(tmp_path)
    pins = {}
    for seed, spec in ((1, ONE), (2, TWO)):
        write_mlp(tmp_path / f"m{seed}" / "model.onnx", seed=seed)
        pins[spec] = manifest_digest_of((publish_dir_as(settings, spec, tmp_path / f"m{seed}") / "manifest.yaml")
                                        .read_bytes())
    file = tmp_path / "mlos-deploy.yaml"
    base = Deployment(str(settings.publish_dir))
    write_deployment(file, base.with_model(parse_spec(ONE), pins[ONE]))
    token = tmp_path / "token"
    with running_core(settings.publish_dir, tmp_path, ["--device", "cpu", "--deployment", str(file),
                                                       "--token-file", str(token),
                                                       "--state-dir", str(tmp_path / "state")]) as proc:
        c = Core(proc.url, token.read_text().strip(), proc.proc, proc.log)
        status, ready, _ = c.call("GET", "/ready")
        assert (status, ready["models"]) == (200, [ONE]), ready
        status, answer, _ = c.call("POST", f"/models/{ONE}/inference", X)
        assert status == 200, answer
        np.testing.assert_allclose(np.asarray(answer["outputs"]["y"]["data"]), reference(1), rtol=1e-6)
        assert c.call("GET", f"/models/{ONE}")[1]["verification"] == "sha256+xxh3_128"
        for method, path, body in (("POST", "/models/register", {"model_id": TWO}), ("DELETE", f"/models/{ONE}", None)):
            status, err, _ = c.call(method, path, body)
            assert (status, err["code"]) == (409, "managed_by_deployment"), err

        write_deployment(file, base.with_model(parse_spec(ONE), pins[ONE]).with_model(parse_spec(TWO), pins[TWO]))
        assert wait_until(lambda: c.call("GET", "/ready")[1]["models"] == [ONE, TWO])
        assert c.call("POST", f"/models/{TWO}/inference", X)[0] == 200

        wrong = "sha256:" + "0" * 64  # TWO pinned to a digest it is not published with
        write_deployment(file, base.with_model(parse_spec(ONE), pins[ONE]).with_model(parse_spec(TWO), wrong))
        assert wait_until(lambda: c.call("GET", "/ready")[0] == 503)
        status, ready, _ = c.call("GET", "/ready")
        assert ready["models"] == [ONE] and TWO in ready["failed"], ready
        assert c.call("POST", f"/models/{ONE}/inference", X)[0] == 200  # the rest is served on
        assert c.call("POST", f"/models/{TWO}/inference", X)[0] == 503

        file.write_text("models: [\n")  # half-written by hand: what is loaded stays, the file is named
        assert wait_until(lambda: str(file) in c.call("GET", "/ready")[1]["failed"])
        assert c.call("POST", f"/models/{ONE}/inference", X)[0] == 200


def test_ray_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlos_core", "serve", "--repository", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    for args, says in ((["--ray"], "--ray needs --deployment"), (["--address", "auto"], "--address goes with --ray"),
                       (["--deployment", str(tmp_path / "none.yaml")], "No deployment file")):
        r = serve(*args)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    (tmp_path / "d.yaml").write_text("apiVersion: axon.mlos.io/v1\nkind: Deployment\nrepository: /elsewhere\n")
    r = serve("--deployment", str(tmp_path / "d.yaml"))
    assert r.returncode == 2 and "differs from the deployment file's repository" in r.stderr, r.stderr
    for server, says in (("{max_batch_size: '32'}", "server.max_batch_size"),
                         ("{max_queue_size: -5}", "max_queue_size"), ("{intra_op_spinning: 'false'}", "must be bool")):
        (tmp_path / "s.yaml").write_text(f"apiVersion: axon.mlos.io/v1\nkind: Deployment\nrepository: {tmp_path}\n"
                                         f"server: {server}\n")
        r = serve("--deployment", str(tmp_path / "s.yaml"))
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (server, r.stderr)
