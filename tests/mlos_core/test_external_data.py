"""External data through MLOS Core: only verified bytes from the version directory reach onnxruntime.

A real ``mlos-core serve`` runs with its working directory at ``/`` (where a relative location
that onnxruntime resolved itself would land). Hostile packages are forged straight into the
production repository, as root, behind install and publish (files rewritten, the manifest
re-hashed with axon.store.manifest's helpers), so only registration stands in their way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from axon.demo import sandbox_settings
from axon.errors import IntegrityError
from axon.example_model import build_example_package
from axon.model.inference import VerifiedModel, build_image, read_verified_model
from axon.model.onnx_signature import iter_tensors
from axon.settings import Settings
from axon.store.fastio import hash_file
from axon.store.layout import MANIFEST_NAME
from axon.store.manifest import FileEntry, Manifest, load_manifest, write_manifest
from mlos_core.errors import ApiError
from mlos_core.registry import Registry
from mlos_core.runtime import create_session
from mlos_core.settings import ServerSettings
from mlos_core.telemetry import Metrics
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.onnx_models import (
    HIDDEN_PLACES,
    custom_domain_model,
    external_data_model,
    model_with_hidden_tensor,
    unknown_op_model,
    write_external_data_package,
)
from tests.support.served import ort_text_embedding

GOOD = "demo/ext@1"
PLACES = ("initializer", "constant", "then")
X_POS = np.asarray([[1.0, -2.0, 3.5, 0.25], [0.5, 0.5, -0.5, 2.0]], np.float32)  # sum > 0: the If's then branch
X_NEG = -X_POS


@dataclasses.dataclass
class Repo:
    settings: Settings
    tmp: Path
    src: Path  # the legitimate package's source directory (the oracle runs onnxruntime on it)
    secret: Path  # a file outside the repository, shaped like the weights

    @property
    def root(self) -> Path:
        return self.settings.publish_dir

    @property
    def good(self) -> Path:
        return self.root / "demo" / "ext" / "1"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    tmp = tmp_path_factory.mktemp("extcore")
    settings = sandbox_settings(tmp)
    src = tmp / "ext-src"
    write_external_data_package(src, seed=1)
    publish_dir_as(settings, GOOD, src)
    secret = tmp / "secret.bin"
    secret.write_bytes(external_data_model(seed=99)[1])
    return Repo(settings, tmp, src, secret)


@contextlib.contextmanager
def core_in_root(repository: Path, tmp: Path, *args: str) -> Iterator[Core]:
    """core_server, started with its working directory at / (it keeps it; this process does not)."""
    with contextlib.ExitStack() as stack:
        with contextlib.chdir("/"):
            c = stack.enter_context(core_server(repository, tmp, *args))
        assert os.readlink(f"/proc/{c.proc.pid}/cwd") == "/"
        yield c


@pytest.fixture(scope="module")
def core(repo: Repo) -> Iterator[Core]:
    with core_in_root(repo.root, repo.tmp) as c:
        yield c
    assert "Traceback" not in c.log.read_text()


def oracle(model_path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime itself, on the files as they lie in a directory (not our loading code)."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def infer(core: Core, spec: str, x: np.ndarray) -> np.ndarray:
    status, body, _ = core.call("POST", f"/models/{spec}/inference", {"inputs": {"x": x.tolist()}})
    assert status == 200, body
    return np.asarray(body["outputs"]["y"]["data"], np.float32)


def forge(repo: Repo, name: str, files: dict[str, bytes | None], *, entrypoint: str = "model.onnx",
          base: Path | None = None, by_path: bool = False) -> str:
    """Copy a published version to demo/<name>/1 and change its files behind axon's back (as root:
    read-only modes lifted), then re-hash the manifest so it matches: only registration can refuse it.

    *files* maps package paths to new contents (None: remove). ``requirements.memory_bytes`` is set
    to the entrypoint's size, which made the server before this change load the model from bytes
    (onnxruntime then resolved relative locations against its working directory), or with
    *by_path* to the package's size, which made it load by path (locations resolved beside it)."""
    src = base or repo.good
    dest = repo.root / "demo" / name / "1"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    for rel, data in files.items():
        if data is None:
            (dest / rel).unlink()
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
    old = load_manifest(src / MANIFEST_NAME)
    entries = [FileEntry(str(p.relative_to(dest)), *dataclasses.astuple(hash_file(p)))
               for p in sorted(dest.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME
               and ".axon" not in p.relative_to(dest).parts]
    size = sum(e.size for e in entries) if by_path else next(e.size for e in entries if e.path == entrypoint)
    write_manifest(dest, dataclasses.replace(old, name=name, entrypoint=entrypoint, files=entries, digest="",
                                             requirements={"memory_bytes": size, "gpu": "optional"}))
    return f"demo/{name}@1"


def register(core: Core, spec: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = core.call("POST", "/models/register", {"model_id": spec})
    return status, body


def assert_refused(core: Core, spec: str, status: int, code: str, *fragments: str) -> None:
    got, body = register(core, spec)
    assert (got, body.get("code")) == (status, code), body
    assert all(f in body["message"] for f in fragments), body["message"]
    assert spec not in {m["model_id"] for m in core.call("GET", "/models")[1]["models"]}


def _location(repo: Repo, attack: str) -> str:
    if attack == "dotdot":
        return "../" * 12 + str(repo.secret).lstrip("/")
    if attack == "absolute":
        return str(repo.secret)
    return str(repo.secret).lstrip("/")  # resolved against the server's working directory, /, it is the secret


# --- a legitimate model -----------------------------------------------------------------------------


def test_external_data_model_serves_what_onnxruntime_computes_on_the_source(core: Core, repo: Repo) -> None:
    """Initializer + Constant + If-branch weights, all external: installed, published, registered,
    and answering exactly what onnxruntime answers on the original files."""
    status, body = register(core, GOOD)
    assert status in (200, 201), body
    for x in (X_POS, X_NEG, X_POS[:1]):
        np.testing.assert_allclose(infer(core, GOOD, x), oracle(repo.src / "model.onnx", x), rtol=1e-6, atol=1e-6)


# --- references leading out ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "cwd_relative"])
@pytest.mark.parametrize("place", PLACES)
def test_a_forged_reference_leading_out_is_refused_at_registration(core: Core, repo: Repo, place: str,
                                                                   attack: str) -> None:
    location = _location(repo, attack)
    hostile, _ = external_data_model(seed=1, locations={place: location}, only=(place,))
    spec = forge(repo, f"out-{place}-{attack}", {"model.onnx": hostile.SerializeToString()})
    if attack == "cwd_relative":
        assert_refused(core, spec, 400, "invalid_model", location, "not in the package")
    else:
        assert_refused(core, spec, 403, "outside_repository", location)


@pytest.mark.parametrize("place", PLACES)
def test_a_hashed_decoy_elsewhere_does_not_cover_the_named_file(core: Core, repo: Repo, place: str) -> None:
    """The model (in onnx/) says weights.bin, the manifest lists and hashes a weights.bin at the top,
    and an unlisted onnx/weights.bin lies where the location really points: refused."""
    model, blob = external_data_model(seed=1, locations={place: "weights.bin"}, only=(place,))
    spec = forge(repo, f"decoy-{place}", {"onnx/model.onnx": model.SerializeToString(), "model.onnx": None},
                 entrypoint="onnx/model.onnx", by_path=True)
    (repo.root / "demo" / f"decoy-{place}" / "1" / "onnx" / "weights.bin").write_bytes(blob)  # unlisted
    assert_refused(core, spec, 400, "invalid_model", "'onnx/weights.bin'", "not in the package")


@pytest.mark.parametrize("place", PLACES)
def test_what_was_hashed_is_what_loads_not_the_file_at_the_working_directory(core: Core, repo: Repo,
                                                                             place: str) -> None:
    """A relative location that also names a file from / (the secret): the package lists and hashes
    its own file at that path, so it is legitimate, and the server must read that one, never /<loc>."""
    location = str(repo.secret).lstrip("/")
    model, _ = external_data_model(seed=1, locations={place: location}, only=(place,))
    decoy = external_data_model(seed=7, only=(place,))[1]  # the package's own bytes at that path, not the secret's
    spec = forge(repo, f"hashed-{place}", {"model.onnx": model.SerializeToString(), location: decoy})
    status, body = register(core, spec)
    assert status == 201, body
    vdir = repo.root / "demo" / f"hashed-{place}" / "1"
    for x in (X_POS, X_NEG):
        np.testing.assert_allclose(infer(core, spec, x), oracle(vdir / "model.onnx", x), rtol=1e-6, atol=1e-6)
    secret_dir = repo.tmp / f"secret-{place}"
    (secret_dir / location).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo.secret, secret_dir / location)
    (secret_dir / "model.onnx").write_bytes(model.SerializeToString())
    assert not np.allclose(infer(core, spec, X_POS), oracle(secret_dir / "model.onnx", X_POS))


@pytest.mark.parametrize("place", HIDDEN_PLACES)
def test_tensors_hidden_anywhere_are_checked_at_registration(core: Core, repo: Repo, place: str) -> None:
    hostile = model_with_hidden_tensor(place, "../../../../" + str(repo.secret).lstrip("/"))
    spec = forge(repo, f"hidden-{place.replace('_', '-')}", {"model.onnx": hostile.SerializeToString()})
    assert_refused(core, spec, 403, "outside_repository", "climbs out")


# --- bytes changed after the hash -----------------------------------------------------------------


def test_weights_changed_on_disk_after_registration_are_never_served(core: Core, repo: Repo) -> None:
    """onnxruntime got bytes that were hashed in memory: rewriting the file in place (same inode, same
    size; onnxruntime loading by path would map it) changes nothing served, and registering again
    refuses the changed file."""
    spec = forge(repo, "swap", {})
    vdir = repo.root / "demo" / "swap" / "1"
    assert register(core, spec)[0] == 201
    before = infer(core, spec, X_POS)
    np.testing.assert_allclose(before, oracle(repo.src / "model.onnx", X_POS), rtol=1e-6, atol=1e-6)
    with open(vdir / "weights.bin", "r+b") as f:
        f.write(external_data_model(seed=5)[1])
    after = infer(core, spec, X_POS)
    np.testing.assert_array_equal(after, before)
    assert not np.allclose(oracle(vdir / "model.onnx", X_POS), before)  # the file really says otherwise
    status, body = register(core, spec)
    assert (status, body["code"]) == (409, "integrity") and "weights.bin" in body["message"], body
    np.testing.assert_array_equal(infer(core, spec, X_POS), before)


def test_an_external_file_of_another_size_is_refused(repo: Repo) -> None:
    spec_dir = repo.root / "demo" / "grown" / "1"
    forge(repo, "grown", {})
    with open(spec_dir / "weights.bin", "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(IntegrityError, match=r"'weights\.bin' has \d+ bytes"):
        read_verified_model(spec_dir, load_manifest(spec_dir / MANIFEST_NAME))


# --- operators onnxruntime does not have ------------------------------------------------------------


def test_an_unsupported_operator_domain_is_a_4xx_without_traceback(core: Core, repo: Repo) -> None:
    spec = forge(repo, "custom-domain", {"model.onnx": custom_domain_model().SerializeToString(), "weights.bin": None})
    assert_refused(core, spec, 400, "unsupported_operator", "'com.example.custom'", "'Frobnicate'")
    assert "Traceback" not in core.log.read_text()


def test_a_graph_onnxruntime_refuses_is_a_4xx_naming_its_reason(core: Core, repo: Repo) -> None:
    spec = forge(repo, "unknown-op", {"model.onnx": unknown_op_model().SerializeToString(), "weights.bin": None})
    assert_refused(core, spec, 400, "invalid_model", "onnxruntime cannot load", "NoSuchOperator")
    assert "Traceback" not in core.log.read_text()


# --- rewrites on in-memory models with external data ---------------------------------------------


def test_pooling_is_fused_into_an_encoder_whose_weights_are_external(repo: Repo, tmp_path: Path) -> None:
    """The bundled text encoder saved with its weights (and large Constants) as external data: the
    server fuses mean pooling into the in-memory graph and answers what onnxruntime gives on the files."""
    src = build_example_package(tmp_path / "enc")
    model = onnx.load(str(src / "model.onnx"))
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", convert_attribute=True)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(src / "model.onnx"),
                                                                                 load_external_data=False).graph.initializer)
    settings = sandbox_settings(tmp_path / "sandbox")
    publish_dir_as(settings, "demo/enc-ext@1", src)
    with core_in_root(settings.publish_dir, tmp_path) as c:
        status, body = register(c, "demo/enc-ext@1")
        assert status == 201 and "mean pooling in the graph" in (body["runtime_notes"] or ""), body
        status, answer, _ = c.call("POST", "/models/demo/enc-ext@1/inference", {"input": "external weights"})
        assert status == 200, answer
        np.testing.assert_allclose(np.asarray(answer["outputs"]["embeddings"]["data"]),
                                   ort_text_embedding(src, "external weights"), atol=1e-5)
    assert "Traceback" not in c.log.read_text()


def _verified(repo: Repo) -> tuple[VerifiedModel, Manifest]:
    manifest = load_manifest(repo.good / MANIFEST_NAME)
    return read_verified_model(repo.good, manifest), manifest


def test_fp16_inlines_external_data_in_memory(repo: Repo, tmp_path: Path) -> None:
    """--precision fp16 (CUDA only, so its rewrite is exercised here directly): the external
    weights are inlined into the in-memory graph and converted; nothing external is left."""
    registry = Registry(ServerSettings(repository=repo.root, device="cuda", precision="fp16",
                                       state_dir=tmp_path), Metrics())
    verified, manifest = _verified(repo)
    rewritten, notes = registry._rewrite(verified, manifest)
    assert notes and notes[0].startswith("fp16") and not rewritten.files
    image = build_image(rewritten)
    assert image.external == {}
    inits = {t.name: t for t in onnx.ModelProto.FromString(image.data).graph.initializer}
    assert inits["W"].data_type == onnx.TensorProto.FLOAT16 and inits["W"].data_location == onnx.TensorProto.DEFAULT


def test_fp16_on_external_data_past_2_gib_is_refused_clearly(repo: Repo, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import axon.model.inference

    registry = Registry(ServerSettings(repository=repo.root, device="cuda", precision="fp16",
                                       state_dir=tmp_path), Metrics())
    verified, manifest = _verified(repo)
    monkeypatch.setattr(axon.model.inference, "PROTOBUF_LIMIT", 200)  # stands for 2 GiB (the graph alone is less)
    with pytest.raises(ApiError) as info:
        registry._rewrite(verified, manifest)
    assert info.value.status == 400 and info.value.code == "fp16_unsupported" and "2 GiB" in info.value.message


def test_sessions_get_bytes_and_in_memory_files_never_a_path(repo: Repo) -> None:
    """The image handed to onnxruntime: main-graph initializers name in-memory files, every other
    external tensor was inlined, and a bare graph naming external data is refused."""
    verified, _ = _verified(repo)
    image = build_image(verified)
    assert set(image.external) == {"weights.bin"}
    proto = onnx.ModelProto.FromString(image.data)
    external = {r.where: r.main_initializer for r in iter_tensors(proto) if r.tensor.data_location == 1}
    assert external == {"initializer 'W'": True}  # the Constant's and the branches' tensors are inline now
    assert [e.value for e in proto.graph.initializer[0].external_data if e.key == "location"] == ["weights.bin"]
    with contextlib.chdir("/"):
        info = create_session(build_image(_verified(repo)[0]), "cpu")
        np.testing.assert_allclose(info.session.run(None, {"x": X_POS})[0], oracle(repo.src / "model.onnx", X_POS),
                                   rtol=1e-6, atol=1e-6)
        bare, _ = external_data_model(locations={"constant": str(repo.secret).lstrip("/")})
        with pytest.raises(ApiError) as refused:
            create_session(bare.SerializeToString(), "cpu")
    assert refused.value.status == 400 and "not verified" in refused.value.message
