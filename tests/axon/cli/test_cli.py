"""The real ``axon`` entry point in a subprocess: exit codes, --json, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.hub_server import FakeHub
from tests.support.packages import mlp_dir


def _ok(result: Any) -> Any:
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def _fails(result: Any, code: int, fragment: str) -> Any:
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0]
    return result


def test_help_loads_nothing_heavy() -> None:
    code = ("import sys\nfrom axon.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint(sorted(m for m in ('onnx', 'numpy', 'onnxruntime', 'huggingface_hub', "
            "'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_install_list_info_verify_remove(axon_cli: Any, tmp_path: Path) -> None:
    src = mlp_dir(tmp_path)
    r = _ok(axon_cli("install", "acme/ranker@2.1.0", "--from", str(src), "--json"))
    payload = json.loads(r.stdout)
    assert payload["status"] == "installed" and payload["files"] == 2
    r = _ok(axon_cli("install", "acme/ranker@2.1.0", "--from", str(src)))
    assert "Already installed" in r.stdout
    listing = json.loads(_ok(axon_cli("list", "--json")).stdout)
    assert [m["spec"] for m in listing] == ["acme/ranker@2.1.0"]
    assert listing[0]["digest"] == payload["digest"]
    human = _ok(axon_cli("list")).stdout
    assert human.splitlines()[0].split() == ["SPEC", "SIZE", "FILES", "SOURCE", "REVISION", "DIGEST"]
    info = json.loads(_ok(axon_cli("info", "acme/ranker@2.1.0", "--json")).stdout)
    assert info["spec"]["io"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    assert "inputs:" in _ok(axon_cli("info", "acme/ranker@2.1.0")).stdout
    v = json.loads(_ok(axon_cli("verify", "acme/ranker@2.1.0", "--json")).stdout)
    assert v["ok"] is True and v["files_checked"] == 2
    model = Path(payload["path"]) / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    r = axon_cli("verify", "acme/ranker@2.1.0")
    assert r.code == 3
    assert "MISMATCH model.onnx: xxh3_128 mismatch" in r.stderr
    assert "hint: Reinstall it with: axon install acme/ranker@2.1.0 --force" in r.stderr
    r = axon_cli("verify", "acme/ranker@2.1.0", "--json")
    assert r.code == 3 and json.loads(r.stdout)["problems"][0]["path"] == "model.onnx"
    _ok(axon_cli("remove", "acme/ranker@2.1.0"))
    _fails(axon_cli("info", "acme/ranker@2.1.0"), 1, "is not in the dev cache")


@pytest.mark.parametrize("spec", ["../etc", "acme/../x", "/abs/path", "acme/x@", "a/b/c/d", "acme/x y"])
def test_bad_specs_exit_2(axon_cli: Any, spec: str) -> None:
    r = _fails(axon_cli("info", spec), 2, "Invalid model spec")
    assert len(r.stderr.strip().splitlines()) == 2  # the error, then the hint


def test_usage_errors_exit_2(axon_cli: Any, tmp_path: Path) -> None:
    assert axon_cli("install").code == 2
    assert axon_cli("frobnicate").code == 2
    _fails(axon_cli("install", "acme/x@1"), 2, "only hf/ORG/REPO specs download by name")
    _fails(axon_cli("install", "acme/x@1", "--from", str(tmp_path), "--revision", "main"), 2, "--revision")
    _fails(axon_cli("install", "acme/x@1", "--from", "ftp://host/m.onnx"), 2, "Unsupported --from")


def test_integrity_failure_from_the_hub_exits_3(axon_cli: Any, hub: tuple[FakeHub, str]) -> None:
    from tests.support.onnx_models import mlp_model

    fake, _ = hub
    fake.add_commit("org/m", {"model.onnx": mlp_model().SerializeToString()})
    fake.corrupt.add(("org/m", "model.onnx"))
    _fails(axon_cli("install", "hf/org/m"), 3, "failed its sha256 check")
    r = _ok(axon_cli("list", "--json"))
    assert json.loads(r.stdout) == []


def test_gated_hub_repo_exits_4(axon_cli: Any, hub: tuple[FakeHub, str]) -> None:
    from tests.support.onnx_models import mlp_model

    fake, _ = hub
    fake.add_commit("org/g", {"model.onnx": mlp_model().SerializeToString()})
    fake.repos["org/g"].gated_token = "tok"
    r = _fails(axon_cli("install", "hf/org/g"), 4, "is gated")
    assert "HF_TOKEN" in r.stderr
    _ok(axon_cli("install", "hf/org/g", env={"HF_TOKEN": "tok"}))


def test_config_commands(axon_cli: Any, isolated_env: dict[str, str]) -> None:
    values = json.loads(_ok(axon_cli("config", "list", "--json")).stdout)["values"]
    assert values["cache_dir"] == isolated_env["AXON_CACHE_DIR"]
    assert values["publish_group"] == "mlos"
    _ok(axon_cli("config", "set", "publish_group", "mlops"))
    assert _ok(axon_cli("config", "get", "publish_group")).stdout.strip() == "mlops"
    assert _ok(axon_cli("config", "get", "auto_publish_on_validation")).stdout.strip() == "false"
    _fails(axon_cli("config", "set", "colour", "blue"), 2, "Unknown config key 'colour'")
    _fails(axon_cli("config", "get", "colour"), 2, "Unknown config key 'colour'")
    _fails(axon_cli("config", "set", "device", "tpu"), 2, "must be one of auto, cpu, cuda")
    cfg = Path(isolated_env["AXON_HOME"]) / "config.yaml"
    cfg.write_text(cfg.read_text() + "bogus: 1\n")
    _fails(axon_cli("list"), 2, "Unknown config key 'bogus'")


def test_cache_stats_gc_and_version(axon_cli: Any, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    _ok(axon_cli("install", "acme/a@1", "--from", str(mlp_dir(tmp_path))))
    broken = Path(isolated_env["AXON_CACHE_DIR"]) / "acme" / "b" / "1"
    broken.mkdir(parents=True)
    stats = json.loads(_ok(axon_cli("cache", "stats", "--json")).stdout)
    assert stats["versions"] == 1 and stats["incomplete_versions"] == [str(broken)]
    gc = json.loads(_ok(axon_cli("cache", "gc", "--json")).stdout)
    assert gc["removed"] == [str(broken)]
    v = json.loads(_ok(axon_cli("version", "--json")).stdout)
    assert v["axon"] and "onnx" in v["libraries"]


def test_list_piped_to_closed_stdout(isolated_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(f"{sys.executable} -m axon version | head -c 1 >/dev/null", shell=True,
                          capture_output=True, text=True, check=False)
    assert "Traceback" not in proc.stderr
