"""``axon.update``: an installed version fetched again from the source its manifest records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from axon.cache import get_installed
from axon.errors import NotInstalledError
from axon.install import install
from axon.settings import Settings
from axon.store.spec import parse_spec
from axon.update import update
from tests.support.file_server import FileServer
from tests.support.hub_server import FakeHub
from tests.support.onnx_models import mlp_model, write_mlp
from tests.support.reporting import RecordingReporter

SPEC = parse_spec("acme/ranker@1")


def test_a_local_install_rereads_its_directory(settings: Settings, tmp_path: Path) -> None:
    src = write_mlp(tmp_path / "src" / "model.onnx", seed=0).parent
    first = install(SPEC, settings, from_=str(src))
    inode = os.stat(first.path).st_ino

    same = update(SPEC, settings)
    assert same.status == "unchanged" and same.manifest.digest == first.manifest.digest
    assert os.stat(get_installed(settings.cache_dir, SPEC).path).st_ino == inode  # left untouched

    write_mlp(src / "model.onnx", seed=1)
    reporter = RecordingReporter()
    changed = update(SPEC, settings, reporter=reporter)
    assert changed.status == "replaced" and changed.manifest.digest != first.manifest.digest
    assert get_installed(settings.cache_dir, SPEC).manifest.digest == changed.manifest.digest
    assert changed.manifest.source["path"] == first.manifest.source["path"]
    assert any(s.startswith(f"fetching {SPEC} from ") for s in reporter.stages)


def test_the_installed_entrypoint_is_kept(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "two"
    write_mlp(src / "a.onnx", seed=0)
    write_mlp(src / "b.onnx", seed=1)
    assert install(SPEC, settings, from_=str(src), entrypoint="b.onnx").manifest.entrypoint == "b.onnx"
    write_mlp(src / "b.onnx", seed=2)
    r = update(SPEC, settings)  # two .onnx files: without the recorded entrypoint this would be ambiguous
    assert r.status == "replaced" and r.manifest.entrypoint == "b.onnx"


def test_a_hub_install_follows_its_branch(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    settings = Settings.from_env(dict(os.environ))  # after the hub fixture set HF_ENDPOINT
    files = {"tokenizer.json": b'{"version": "1.0", "model": {"type": "WordPiece"}}'}
    fake.add_commit("org/m", {**files, "onnx/model.onnx": mlp_model(seed=1).SerializeToString()})
    spec = parse_spec("hf/org/m")
    first = install(spec, settings)
    assert first.manifest.source["revision"] == "main"
    fake.requests.clear()
    assert update(spec, settings).status == "unchanged"
    assert [p for _, p, _ in fake.requests if "/resolve/" in p] == []  # the commit alone says so
    new_sha = fake.add_commit("org/m", {**files, "onnx/model.onnx": mlp_model(seed=2).SerializeToString()})
    r = update(spec, settings)
    assert r.status == "replaced" and r.manifest.source["commit"] == new_sha
    assert get_installed(settings.cache_dir, spec).manifest.digest == r.manifest.digest != first.manifest.digest


def test_a_url_install_refetches_its_url(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = mlp_model(seed=0).SerializeToString()
    first = install(SPEC, settings, from_=f"{url}/files/m.onnx")
    fs.files["m.onnx"] = mlp_model(seed=1).SerializeToString()
    r = update(SPEC, settings)
    assert r.status == "replaced" and r.manifest.digest != first.manifest.digest
    assert update(SPEC, settings).status == "unchanged"


def test_only_an_installed_version_updates(settings: Settings) -> None:
    with pytest.raises(NotInstalledError, match="is not in the dev cache"):
        update(SPEC, settings)
