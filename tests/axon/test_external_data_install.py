"""External data and operator domains on axon's side: ``axon install`` checks every tensor of the
graph (initializers, node attributes, subgraphs, sparse tensors, local functions), the function
publish calls on its staged copy refuses the same, and ``axon test``/``validate``/``run`` load the
verified bytes from memory and exit 2 when onnxruntime refuses a model."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from axon.demo import sandbox_settings
from axon.errors import InvalidModelError
from axon.install import install
from axon.model.onnx_signature import (
    ExternalDataOutsideError,
    UnsupportedOperatorError,
    check_external_data,
    check_operator_domains,
    read_signature,
)
from axon.publish import publish
from axon.store.fastio import hash_file
from axon.store.manifest import FileEntry, load_manifest, write_manifest
from axon.store.spec import parse_spec
from tests.support.onnx_models import (
    HIDDEN_PLACES,
    custom_domain_model,
    external_data_model,
    model_with_hidden_tensor,
    unknown_op_model,
    write_external_data_package,
)

SPEC = "acme/ext@1"
# What each of external_data_model's places is called in messages.
WHERE = {"initializer": "initializer 'W'", "constant": "node 'const' (Constant)",
         "then": "initializer 'T' in graph 'then_branch' of node 'choose' (If)"}


def _attack(kind: str, outside: Path) -> str:
    """A location leading to *outside* (a file beside the model directory)."""
    if kind == "dotdot":
        return "../" + outside.name
    if kind == "absolute":
        return str(outside)
    return str(outside).lstrip("/")  # relative: what a process whose working directory is / would read


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every package, shaped like the weights (so a read of it would 'work')."""
    path = tmp_path / "secret.bin"
    path.write_bytes(external_data_model(seed=99)[1])
    return path


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "unlisted"])
@pytest.mark.parametrize("place", list(WHERE))
def test_install_refuses_external_data_outside_the_package(place: str, attack: str, secret: Path, tmp_path: Path,
                                                           axon_cli: Any, settings: Any) -> None:
    src = tmp_path / "src"
    location = _attack(attack, secret)
    write_external_data_package(src, locations={place: location})
    r = axon_cli("install", SPEC, "--from", str(src))
    assert r.code == 2, (r.stdout, r.stderr)
    assert location in r.stderr and WHERE[place] in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (settings.cache_dir / "acme").exists()


def test_publish_check_resolves_locations_against_the_entrypoint_directory(secret: Path) -> None:
    """``check_external_data`` is what publish runs on its staged copy: paths are package paths."""
    model, _ = external_data_model()
    assert check_external_data(model, "model.onnx", {"model.onnx", "weights.bin"}) == ["weights.bin"]
    assert check_external_data(model.SerializeToString(), "onnx/model.onnx",
                               {"onnx/model.onnx", "onnx/weights.bin"}) == ["onnx/weights.bin"]
    # The model says weights.bin next to onnx/model.onnx; a hashed weights.bin elsewhere is no excuse.
    with pytest.raises(InvalidModelError, match=r"'onnx/weights\.bin'.*not in the package"):
        check_external_data(model, "onnx/model.onnx", {"onnx/model.onnx", "weights.bin"})
    for place in WHERE:
        for attack, error, why in (("dotdot", ExternalDataOutsideError, "climbs out"),
                                   ("absolute", ExternalDataOutsideError, "absolute"),
                                   ("unlisted", InvalidModelError, "not in the package")):
            hostile, _ = external_data_model(locations={place: _attack(attack, secret)})
            with pytest.raises(error, match=why) as info:
                check_external_data(hostile, "model.onnx", {"model.onnx", "weights.bin"})
            assert WHERE[place] in str(info.value) and _attack(attack, secret) in str(info.value)


@pytest.mark.parametrize("place", HIDDEN_PLACES)
def test_every_place_a_tensor_can_hide_is_checked(place: str, tmp_path: Path) -> None:
    assert check_external_data(model_with_hidden_tensor(place, "w.bin"), "m/model.onnx", {"m/w.bin"}) == ["m/w.bin"]
    with pytest.raises(ExternalDataOutsideError, match=r"'\.\./w\.bin'"):
        check_external_data(model_with_hidden_tensor(place, "../w.bin"), "m/model.onnx", {"w.bin"})
    with pytest.raises(InvalidModelError, match="not in the package"):
        check_external_data(model_with_hidden_tensor(place, "other.bin"), "m/model.onnx", {"m/w.bin"})
    # read_signature (what install runs) refuses them as well.
    path = tmp_path / "model.onnx"
    path.write_bytes(model_with_hidden_tensor(place, "/etc/hostname").SerializeToString())
    with pytest.raises(ExternalDataOutsideError, match="absolute"):
        read_signature(path)


@pytest.mark.parametrize(("location", "why"), [
    ("w\\..\\..\\etc\\passwd", "backslash"), ("", "empty"), ("w.bin\x00.txt", "control character"),
    ("w\n.bin", "control character"), ("*/_ORT_MEM_ADDR_/*", "memory address"), ("sub/..", r"'\.\.'"),
    ("/", "absolute"), (".", "directory"),
])
def test_malformed_locations_are_refused(location: str, why: str) -> None:
    with pytest.raises(InvalidModelError, match=why):
        check_external_data(model_with_hidden_tensor("constant_of_shape", location), "model.onnx", {"w.bin"})


def test_a_repeated_or_missing_location_key_is_refused() -> None:
    model, _ = external_data_model()
    w = model.graph.initializer[0]
    extra = w.external_data.add()
    extra.key, extra.value = "location", "/etc/passwd"  # a reader taking the last one would go there
    with pytest.raises(InvalidModelError, match="'location' twice"):
        check_external_data(model, "model.onnx", {"weights.bin"})
    del w.external_data[:]
    with pytest.raises(InvalidModelError, match="without a location"):
        check_external_data(model, "model.onnx", {"weights.bin"})
    model, _ = external_data_model()
    next(e for e in model.graph.initializer[0].external_data if e.key == "offset").value = "-4"
    with pytest.raises(InvalidModelError, match="bad offset"):
        check_external_data(model, "model.onnx", {"weights.bin"})


def test_a_legitimate_external_data_model_installs_tests_and_runs(tmp_path: Path, axon_cli: Any,
                                                                  settings: Any) -> None:
    src = tmp_path / "src"
    write_external_data_package(src, seed=3)
    r = axon_cli("install", SPEC, "--from", str(src))
    assert r.code == 0, r.stderr
    manifest = load_manifest(settings.cache_dir / "acme" / "ext" / "1" / "manifest.yaml")
    assert sorted(f.path for f in manifest.files) == ["model.onnx", "weights.bin"]
    assert manifest.requirements and manifest.requirements["memory_bytes"] == manifest.total_size
    r = axon_cli("test", SPEC, "--json")
    assert r.code == 0, r.stdout + r.stderr
    x = np.asarray([[1.0, -2.0, 3.5, 0.25], [0.5, 0.5, -0.5, 2.0]], np.float32)
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": x.tolist()}}))
    r = axon_cli("run", SPEC, "--input-file", str(tmp_path / "x.json"), "--json")
    assert r.code == 0, r.stderr
    oracle = ort.InferenceSession(str(src / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.asarray(json.loads(r.stdout)["outputs"]["y"]["data"]),
                               oracle.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)


def _forge_cache(settings: Any, spec_dir: tuple[str, ...], model_bytes: bytes) -> Path:
    """Replace an installed model behind axon's back (root), the manifest re-hashed to match."""
    vdir = settings.cache_dir.joinpath(*spec_dir)
    (vdir / "model.onnx").write_bytes(model_bytes)
    m = load_manifest(vdir / "manifest.yaml")
    files = [FileEntry(f.path, *dataclasses.astuple(hash_file(vdir / f.path))) for f in m.files]
    write_manifest(vdir, dataclasses.replace(m, files=files, digest=""))
    return vdir


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "unlisted"])
@pytest.mark.parametrize("place", list(WHERE))
def test_publish_refuses_a_cached_model_changed_to_read_outside(place: str, attack: str, secret: Path,
                                                                tmp_path: Path) -> None:
    """The cached copy rewritten behind install's back (root, manifest re-hashed): publish checks
    the graph of its verified staged copy and promotes nothing."""
    settings = sandbox_settings(tmp_path / "sandbox")
    src = tmp_path / "src"
    write_external_data_package(src)
    install(parse_spec(SPEC), settings, from_=str(src))
    location = _attack(attack, secret)
    hostile, _ = external_data_model(locations={place: location})
    _forge_cache(settings, ("acme", "ext", "1"), hostile.SerializeToString())
    with pytest.raises(InvalidModelError) as info:
        publish(parse_spec(SPEC), settings)
    assert info.value.exit_code == 2 and location in str(info.value) and WHERE[place] in str(info.value)
    assert not (settings.publish_dir / "acme" / "ext" / "1").exists()


def test_local_sessions_refuse_what_install_would_have(tmp_path: Path, secret: Path, axon_cli: Any,
                                                       settings: Any) -> None:
    """A cached model changed to read outside (root, manifest re-hashed) is refused by test/run (exit 2)
    and never read: ``axon run`` from / cannot make it read /<location>."""
    src = tmp_path / "src"
    write_external_data_package(src)
    assert axon_cli("install", SPEC, "--from", str(src)).code == 0
    hostile, _ = external_data_model(locations={"constant": str(secret).lstrip("/")})
    _forge_cache(settings, ("acme", "ext", "1"), hostile.SerializeToString())
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    cwd = os.getcwd()
    os.chdir("/")
    try:
        run = axon_cli("run", SPEC, "--input-file", str(tmp_path / "x.json"))
        test = axon_cli("test", SPEC)
    finally:
        os.chdir(cwd)
    for r in (run, test):
        assert r.code == 2, (r.stdout, r.stderr)
        assert str(secret).lstrip("/") in r.stderr and "not in the package" in r.stderr, r.stderr


def test_a_file_changed_after_install_is_not_loaded(tmp_path: Path, axon_cli: Any, settings: Any) -> None:
    src = tmp_path / "src"
    write_external_data_package(src)
    assert axon_cli("install", SPEC, "--from", str(src)).code == 0
    weights = settings.cache_dir / "acme" / "ext" / "1" / "weights.bin"
    with open(weights, "r+b") as f:  # same size, same inode: only the hash tells
        f.write(np.full(4, 7, np.float32).tobytes())
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    r = axon_cli("run", SPEC, "--input-file", str(tmp_path / "x.json"))
    assert r.code == 3 and "weights.bin" in r.stderr, (r.stdout, r.stderr)


def test_unsupported_operator_domain_is_refused_at_install(tmp_path: Path, axon_cli: Any) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.onnx").write_bytes(custom_domain_model().SerializeToString())
    r = axon_cli("install", SPEC, "--from", str(tmp_path / "src"))
    assert r.code == 2, (r.stdout, r.stderr)
    assert "'com.example.custom'" in r.stderr and "'Frobnicate'" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UnsupportedOperatorError, match=r"com\.example\.custom"):
        check_operator_domains(custom_domain_model())
    # A node calling one of the model's own functions is fine (their domain is the model's).
    check_operator_domains(model_with_hidden_tensor("function", "w.bin"))


def test_onnxruntime_refusing_the_graph_is_exit_2_in_test_validate_and_run(tmp_path: Path, axon_cli: Any,
                                                                           settings: Any) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.onnx").write_bytes(unknown_op_model().SerializeToString())
    assert axon_cli("install", SPEC, "--from", str(tmp_path / "src")).code == 0  # only onnxruntime can tell
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    for args in (("test", SPEC), ("validate", SPEC, "--seconds", "0.05"),
                 ("run", SPEC, "--input-file", str(tmp_path / "x.json"))):
        r = axon_cli(*args)
        assert r.code == 2, (args, r.stdout, r.stderr)
        assert "onnxruntime cannot load" in r.stderr and "NoSuchOperator" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    report = json.loads((settings.cache_dir / "acme" / "ext" / "1" / ".axon" / "validation.json").read_text())
    assert report["passed"] is False and {c["name"]: c["ok"] for c in report["checks"]}["load"] is False


def test_external_data_inside_the_onnx_file_itself_is_allowed() -> None:
    """A location may name the entrypoint itself (some exporters append weights): it is listed."""
    model, _ = external_data_model()
    next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = "model.onnx"
    assert check_external_data(model, "model.onnx", {"model.onnx", "weights.bin"}) == ["model.onnx", "weights.bin"]
