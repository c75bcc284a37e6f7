"""Hub installs through the real huggingface_hub client against a local Hub-speaking server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from axon import cache
from axon.errors import IntegrityError, InvalidModelError, PermissionDeniedError, SourceError
from axon.install import install
from axon.settings import Settings
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.hub_server import FakeHub
from tests.support.onnx_models import mlp_model, write_external_data_model

TOKENIZER = b'{"version": "1.0", "model": {"type": "WordPiece"}}'


def _files(seed: int = 0, *, onnx_path: str = "onnx/model.onnx") -> dict[str, bytes]:
    return {
        onnx_path: mlp_model(features=64, out=64, seed=seed).SerializeToString(),
        "tokenizer.json": TOKENIZER,
        "tokenizer_config.json": b'{"model_max_length": 256}',
        "config.json": b'{"architectures": ["BertModel"]}',
        "README.md": b"# card",
        "pytorch_model.bin": b"\0" * 2048,
    }


def _settings() -> Settings:
    return Settings.from_env(dict(os.environ))


def test_hub_install_prefers_onnx_and_records_commit(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    sha = fake.add_commit("org/encoder", _files())
    r = install(parse_spec("hf/org/encoder"), _settings())
    m = r.manifest
    assert r.path == _settings().cache_dir / "hf" / "org" / "encoder" / "latest"
    assert sorted(f.path for f in m.files) == ["config.json", "onnx/model.onnx", "tokenizer.json",
                                              "tokenizer_config.json"]
    assert m.entrypoint == "onnx/model.onnx"
    assert m.source == {"type": "hf", "repo": "org/encoder", "revision": "main", "commit": sha}
    assert m.preprocessing and m.preprocessing["max_length"] == 256
    assert m.license == "apache-2.0"
    assert (r.path / "onnx/model.onnx").read_bytes() == _files()["onnx/model.onnx"]
    assert cache.verify(_settings().cache_dir, r.spec).ok
    # HEAD per file (metadata), then GET.
    methods = {(meth, p.rsplit("/", 1)[-1]) for meth, p, _ in fake.requests if "/resolve/" in p}
    assert ("HEAD", "model.onnx") in methods and ("GET", "model.onnx") in methods


def test_root_model_onnx_and_revision_pins(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    first = fake.add_commit("org/m", _files(1, onnx_path="model.onnx"))
    fake.add_commit("org/m", _files(2, onnx_path="model.onnx"))
    r = install(parse_spec(f"hf/org/m@{first}"), _settings())
    assert r.manifest.source["commit"] == first
    r2 = install(parse_spec("hf/org/m@pinned"), _settings(), revision=first)
    assert r2.manifest.digest == r.manifest.digest
    assert r2.manifest.source["revision"] == first


def test_corrupted_lfs_file_is_refused(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    fake.add_commit("org/bad", _files())
    fake.corrupt.add(("org/bad", "onnx/model.onnx"))
    with pytest.raises(IntegrityError) as info:
        install(parse_spec("hf/org/bad"), _settings())
    assert info.value.exit_code == 3
    assert "sha256" in str(info.value) and "onnx/model.onnx" in str(info.value)
    layout = StoreLayout(_settings().cache_dir)
    assert not layout.version_dir(parse_spec("hf/org/bad")).exists()
    assert list(layout.staging.iterdir()) == []
    assert list(layout.downloads.glob("*.part")) == []


def test_corrupted_small_file_is_refused_by_git_blob_id(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    fake.add_commit("org/bad2", _files())
    fake.corrupt.add(("org/bad2", "tokenizer.json"))
    with pytest.raises(IntegrityError, match="git blob id"):
        install(parse_spec("hf/org/bad2"), _settings())


def test_dropped_connection_is_resumed(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    files = _files()
    # huggingface_hub writes in 10 MiB chunks: drop after more than one so there is something to resume.
    files["onnx/model.onnx"] = mlp_model(features=1024, out=3200).SerializeToString()  # ~12.5 MiB
    fake.add_commit("org/flaky", files)
    fake.drop_after[("org/flaky", "onnx/model.onnx")] = 11 << 20
    r = install(parse_spec("hf/org/flaky"), _settings())
    assert (r.path / "onnx/model.onnx").read_bytes() == files["onnx/model.onnx"]
    gets = [rng for meth, p, rng in fake.requests if meth == "GET" and p.endswith("onnx/model.onnx")]
    assert gets[0] is None and gets[1] is not None and int(gets[1][6:-1]) >= 10 << 20


def test_external_data_from_the_hub(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    fake, _ = hub
    model = write_external_data_model(tmp_path / "ext")
    fake.add_commit("org/ext", {"model.onnx": model.read_bytes(),
                                "model.onnx_data": (model.parent / "model.onnx_data").read_bytes()})
    r = install(parse_spec("hf/org/ext"), _settings())
    assert sorted(f.path for f in r.manifest.files) == ["model.onnx", "model.onnx_data"]


def test_no_onnx_export(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    fake.add_commit("org/torch-only", {"pytorch_model.bin": b"\0" * 10, "config.json": b"{}"})
    with pytest.raises(InvalidModelError, match="has no ONNX export") as info:
        install(parse_spec("hf/org/torch-only"), _settings())
    assert info.value.hint and "--export" in info.value.hint


def test_other_onnx_files_need_entrypoint(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    fake.add_commit("org/q", {"onnx/model_quantized.onnx": mlp_model().SerializeToString()})
    with pytest.raises(InvalidModelError, match="but other ONNX files") as info:
        install(parse_spec("hf/org/q"), _settings())
    assert info.value.hint and "--entrypoint" in info.value.hint
    r = install(parse_spec("hf/org/q"), _settings(), entrypoint="onnx/model_quantized.onnx")
    assert r.manifest.entrypoint == "onnx/model_quantized.onnx"


def test_unknown_repo_and_revision(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    with pytest.raises(SourceError, match="was not found"):
        install(parse_spec("hf/org/nope"), _settings())
    fake.add_commit("org/m", _files())
    with pytest.raises(SourceError, match="Revision 'v9' of Hub repo 'org/m' does not exist"):
        install(parse_spec("hf/org/m@v9"), _settings())


def test_gated_repo_needs_token(hub: tuple[FakeHub, str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake, _ = hub
    fake.add_commit("org/gated", _files())
    fake.repos["org/gated"].gated_token = "hf_secret"
    with pytest.raises(PermissionDeniedError, match="gated") as info:
        install(parse_spec("hf/org/gated"), _settings())
    assert info.value.exit_code == 4 and info.value.hint and "HF_TOKEN" in info.value.hint
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert install(parse_spec("hf/org/gated"), _settings()).status == "installed"


def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SourceError, match="Cannot reach the Hub"):
        install(parse_spec("hf/org/m"), _settings())


def test_update_follows_the_branch(hub: tuple[FakeHub, str]) -> None:
    from axon.cache import get_installed

    fake, _ = hub
    fake.add_commit("org/m", _files(1))
    first = install(parse_spec("hf/org/m"), _settings())
    fake.requests.clear()
    same = install(parse_spec("hf/org/m"), _settings(), revision="main", only_if_changed=True)
    assert same.status == "unchanged"
    assert [p for _, p, _ in fake.requests if "/resolve/" in p] == []  # nothing downloaded to find out
    new_sha = fake.add_commit("org/m", _files(2))
    updated = install(parse_spec("hf/org/m"), _settings(), revision="main", only_if_changed=True)
    assert updated.status == "replaced" and updated.manifest.source["commit"] == new_sha
    assert get_installed(_settings().cache_dir, first.spec).manifest.digest == updated.manifest.digest
    assert updated.manifest.digest != first.manifest.digest
