"""axon test / validate / run / test-integration / doctor through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from axon.example_model import build_example_package
from tests.support.onnx_models import write_mlp

ENC = "demo/enc@1"


@pytest.fixture
def encoder(tmp_path: Path, axon_cli: Any) -> Path:
    pkg = build_example_package(tmp_path / "enc")
    r = axon_cli("install", ENC, "--from", str(pkg), "--json")
    assert r.code == 0, r.stderr
    return Path(json.loads(r.stdout)["path"])


def test_test_passes_one_line_per_check(encoder: Path, axon_cli: Any) -> None:
    r = axon_cli("test", ENC)
    assert r.code == 0, r.stderr
    names = [line.split()[1] for line in r.stdout.splitlines()]
    assert names == ["integrity", "onnx.checker", "load", "inference"]
    assert all(line.startswith("PASS") for line in r.stdout.splitlines())


def test_test_fails_on_a_corrupt_file(encoder: Path, axon_cli: Any) -> None:
    data = bytearray((encoder / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (encoder / "model.onnx").write_bytes(bytes(data))
    r = axon_cli("test", ENC, "--json")
    assert r.code == 1
    checks = {c["name"]: c["ok"] for c in json.loads(r.stdout)["checks"]}
    assert checks["integrity"] is False


def test_test_fails_when_declared_outputs_differ_from_the_graph(encoder: Path, axon_cli: Any) -> None:
    import os

    from axon.store.manifest import compute_integrity_digest, load_manifest

    mpath = encoder / "manifest.yaml"
    data = yaml.safe_load(mpath.read_text())
    data["spec"]["io"]["outputs"][0]["shape"] = [-1, -1, 999]
    os.chmod(mpath, 0o644)
    mpath.write_text(yaml.safe_dump(data))
    assert load_manifest(mpath).digest == compute_integrity_digest(load_manifest(mpath).files)
    r = axon_cli("test", ENC)
    assert r.code == 1 and "FAIL  inference" in r.stdout and "999" in r.stdout


def test_validate_writes_a_report_without_changing_the_digest(encoder: Path, axon_cli: Any) -> None:
    before = json.loads(axon_cli("info", ENC, "--json").stdout)["integrity"]["digest"]
    r = axon_cli("validate", ENC, "--seconds", "0.2", "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] and report["digest"] == before
    assert report["accuracy"]["passed"] and report["accuracy"]["max_abs_error"] < 1e-4
    assert report["performance"]["batch1"]["p50_ms"] > 0 and report["performance"]["throughput_per_s"] > 0
    assert report["compatibility"]["opset_supported"] and report["resources"]["peak_rss_bytes"] > 0
    assert json.loads((encoder / ".axon" / "validation.json").read_text())["digest"] == before
    assert "PASSED" in (encoder / ".axon" / "validation.txt").read_text()
    assert axon_cli("verify", ENC).code == 0  # the report is not part of the package
    assert json.loads(axon_cli("info", ENC, "--json").stdout)["integrity"]["digest"] == before


def test_validate_fails_on_wrong_reference_outputs(encoder: Path, axon_cli: Any, tmp_path: Path) -> None:
    ref = json.loads((encoder / "samples" / "reference.json").read_text())
    ref["outputs"]["embeddings"][0][0] += 0.5
    bad = tmp_path / "bad-ref.json"
    bad.write_text(json.dumps(ref))
    r = axon_cli("validate", ENC, "--reference", str(bad), "--seconds", "0.1")
    assert r.code == 1 and "FAIL  accuracy" in r.stdout and "embeddings: max abs error" in r.stdout


def test_publish_validate_and_auto_publish(encoder: Path, axon_cli: Any, isolated_env: dict[str, str]) -> None:
    import grp
    import os

    Path(isolated_env["AXON_PUBLISH_DIR"]).mkdir()
    assert axon_cli("config", "set", "publish_group", grp.getgrgid(os.getegid()).gr_name).code == 0
    r = axon_cli("publish", ENC, "--validate")
    assert r.code == 0 and "validating now" in r.stderr, r.stderr
    assert axon_cli("unpublish", ENC, "--purge", "--yes").code == 0
    assert axon_cli("config", "set", "auto_publish_on_validation", "true").code == 0
    r = axon_cli("validate", ENC, "--seconds", "0.1", "--json")
    assert r.code == 0 and json.loads(r.stdout)["auto_published"] == "published"


def test_run_text_and_tensors(encoder: Path, axon_cli: Any, tmp_path: Path) -> None:
    r = axon_cli("run", ENC, "--input", "Hello, MLOS!", "--json")
    assert r.code == 0, r.stderr
    emb = np.asarray(json.loads(r.stdout)["outputs"]["embeddings"]["data"])
    ref = json.loads((encoder / "samples" / "reference.json").read_text())
    np.testing.assert_allclose(emb[0], ref["outputs"]["embeddings"][0], atol=1e-5)
    assert "embeddings  float32 [1, 64]" in axon_cli("run", ENC, "--input", "hi").stdout
    write_mlp(tmp_path / "mlp" / "model.onnx")
    assert axon_cli("install", "demo/mlp@1", "--from", str(tmp_path / "mlp")).code == 0
    np.savez(tmp_path / "x.npz", x=np.ones((2, 4), np.float32))
    r = axon_cli("run", "demo/mlp@1", "--input-file", str(tmp_path / "x.npz"), "--json")
    assert r.code == 0 and json.loads(r.stdout)["outputs"]["y"]["shape"] == [2, 3]
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    assert json.loads(axon_cli("run", "demo/mlp@1", "--input-file", str(tmp_path / "x.json"),
                               "--json").stdout)["outputs"]["y"]["shape"] == [1, 3]
    r = axon_cli("run", "demo/mlp@1", "--input", "text")
    assert r.code == 2 and "takes tensors, not text" in r.stderr
    assert axon_cli("run", ENC).code == 2


def test_test_integration_against_a_real_server(encoder: Path, axon_cli: Any, tmp_path: Path,
                                                isolated_env: dict[str, str]) -> None:
    import grp
    import os

    from tests.support.core_server import core_server

    r = axon_cli("test-integration", ENC, env={"MLOS_CORE_ENDPOINT": "http://127.0.0.1:9"})
    assert r.code == 1 and "not reachable" in r.stderr
    prod = Path(isolated_env["AXON_PUBLISH_DIR"])
    prod.mkdir()
    axon_cli("config", "set", "publish_group", grp.getgrgid(os.getegid()).gr_name)
    assert axon_cli("publish", ENC).code == 0
    with core_server(prod, tmp_path) as core:
        env = {"MLOS_CORE_ENDPOINT": core.url}
        r = axon_cli("test-integration", ENC, env=env)
        assert r.code == 1 and "FAIL  registered" in r.stdout and f"axon register {ENC}" in r.stdout
        assert axon_cli("register", ENC, env=env).code == 0
        r = axon_cli("test-integration", ENC, "--json", env=env)
        assert r.code == 0, r.stdout
        assert {c["name"] for c in json.loads(r.stdout)["checks"]} == {"health", "registered", "same answer",
                                                                       "same content"}


def test_doctor(axon_cli: Any) -> None:
    r = axon_cli("doctor", "--json")
    assert r.code == 0
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert {"onnxruntime", "cuda", "native fastio", "dev cache", "production repository", "publish group",
            "MLOS Core"} <= set(checks)
    assert checks["MLOS Core"]["ok"] is False and "mlos-core serve" in checks["MLOS Core"]["hint"]
    human = axon_cli("doctor").stdout
    assert "hint:" in human
