"""``axon deploy`` / ``deployments`` / ``undeploy`` on a real published copy: verified first, pinned
to the manifest digest, the file written so that a server following it serves exactly that."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from axon.demo import sandbox_settings
from axon.store.deployment import load_deployment
from axon.store.manifest import manifest_digest_of
from tests.support.core_server import publish_dir_as
from tests.support.onnx_models import write_mlp

SPEC = "demo/mlp@1"


def axon(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AXON_HOME": str(tmp_path / "home" / ".axon"), "AXON_CACHE_DIR": str(tmp_path / "cache"),
           "AXON_PUBLISH_DIR": str(tmp_path / "production"), "HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "axon", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)


def test_deploy_pins_the_verified_manifest_digest(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx", seed=1)
    version_dir = publish_dir_as(settings, SPEC, tmp_path / "m")
    pin = manifest_digest_of((version_dir / "manifest.yaml").read_bytes())

    r = axon(tmp_path, "deploy", SPEC, "--autoscale", "1:4", "--gpus", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["status"], out["digest"], out["autoscale"]["max"], out["gpus"]) == ("deployed", pin, 4, 0.5)
    d = load_deployment(tmp_path / "mlos-deploy.yaml")
    assert [(str(m.spec), m.digest) for m in d.models] == [(SPEC, pin)]
    assert d.repository == str(settings.publish_dir)
    assert json.loads(axon(tmp_path, "deploy", SPEC, "--json").stdout)["status"] == "unchanged"

    r = axon(tmp_path, "deployments", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["models"] == [{"spec": SPEC, "digest": pin}], r.stderr
    assert SPEC in axon(tmp_path, "deployments").stdout

    for args, code, says in ((["deploy", "demo/none@1"], 1, "not published"),
                             (["deploy", SPEC, "--replicas", "2", "--autoscale", "1:2"], 2, "not both"),
                             (["deploy", SPEC, "--autoscale", "4:1"], 2, "MIN <= MAX"),
                             (["deploy", SPEC, "--autoscale", "1:4:inf"], 2, "TARGET > 0"),
                             (["deploy", SPEC, "--gpus", "inf"], 2, "--gpus must be"),
                             (["undeploy", "demo/none@1"], 1, "not in the deployment file")):
        r = axon(tmp_path, *args)
        assert r.returncode == code and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)

    model = version_dir / "model.onnx"  # the published copy damaged: deploying it again is refused
    os.chmod(model, 0o644)
    model.write_bytes(model.read_bytes()[:-4] + b"\0\0\0\0")
    r = axon(tmp_path, "deploy", SPEC, "--replicas", "3")
    assert r.returncode == 3 and "damaged" in r.stderr, r.stderr
    assert load_deployment(tmp_path / "mlos-deploy.yaml").autoscale is not None  # the file is as it was

    r = axon(tmp_path, "undeploy", SPEC, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "undeployed", r.stderr
    assert yaml.safe_load((tmp_path / "mlos-deploy.yaml").read_text())["models"] == []
