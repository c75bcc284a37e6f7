from __future__ import annotations

import os
from pathlib import Path

import pytest

from axon import cache
from axon.errors import AxonError, InvalidModelError, SourceError, UsageError
from axon.install import install
from axon.settings import Settings
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.onnx_models import write_external_data_model, write_mlp
from tests.support.packages import encoder_dir, mlp_dir


def test_install_single_onnx_file_reads_signature(settings: Settings, tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "src" / "ranker.onnx", features=5, out=2)
    r = install(parse_spec("acme/ranker@2.1.0"), settings, from_=str(model))
    assert r.status == "installed"
    assert r.path == settings.cache_dir / "acme" / "ranker" / "2.1.0"
    m = r.manifest
    assert m.entrypoint == "ranker.onnx" and m.opset == 17
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [("x", "float32", [-1, 5])]
    assert [(t.name, t.dtype, t.shape) for t in m.outputs] == [("y", "float32", [-1, 2])]
    assert m.source == {"type": "local", "path": str(model.resolve())}
    assert (r.path / "ranker.onnx").read_bytes() == model.read_bytes()
    assert cache.verify(settings.cache_dir, r.spec).ok


def test_install_directory_with_bundled_manifest(settings: Settings, tmp_path: Path) -> None:
    src = encoder_dir(tmp_path)
    r = install(parse_spec("demo/enc@1"), settings, from_=str(src))
    m = r.manifest
    assert sorted(f.path for f in m.files) == ["config.json", "model.onnx", "samples/reference.json", "tokenizer.json"]
    assert m.preprocessing and m.preprocessing["tokenizer"] == "tokenizer.json"
    assert m.postprocessing == {"type": "mean_pooling", "normalize": True, "output": "last_hidden_state"}
    assert m.description and "example text encoder" in m.description
    assert [t.name for t in m.inputs] == ["input_ids", "attention_mask"]


def test_external_data_is_part_of_the_package(settings: Settings, tmp_path: Path) -> None:
    model = write_external_data_model(tmp_path / "ext")
    r = install(parse_spec("acme/ext@1"), settings, from_=str(model.parent))
    assert sorted(f.path for f in r.manifest.files) == ["model.onnx", "model.onnx_data"]
    assert r.manifest.requirements
    assert r.manifest.requirements["memory_bytes"] > (model.parent / "model.onnx").stat().st_size


def test_external_data_missing_is_refused(settings: Settings, tmp_path: Path) -> None:
    model = write_external_data_model(tmp_path / "ext")
    (model.parent / "model.onnx_data").unlink()
    with pytest.raises(InvalidModelError, match=r"model\.onnx_data"):
        install(parse_spec("acme/ext@1"), settings, from_=str(model.parent))
    assert not (settings.cache_dir / "acme").exists()


def test_already_installed_is_a_noop_and_force_replaces(settings: Settings, tmp_path: Path) -> None:
    spec = parse_spec("acme/m@1")
    first = install(spec, settings, from_=str(mlp_dir(tmp_path, seed=1)))
    again = install(spec, settings, from_=str(mlp_dir(tmp_path, seed=2)))
    assert again.status == "already-installed" and again.manifest.digest == first.manifest.digest
    replaced = install(spec, settings, from_=str(mlp_dir(tmp_path, seed=2)), force=True)
    assert replaced.status == "replaced" and replaced.manifest.digest != first.manifest.digest
    assert cache.get_installed(settings.cache_dir, spec).manifest.digest == replaced.manifest.digest
    # Nothing is left in staging or trash.
    assert list(StoreLayout(settings.cache_dir).staging.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", InvalidModelError, "not an .onnx file"),
        (lambda d: (d / "bad.onnx").write_text("this is not a protobuf") and d / "bad.onnx", InvalidModelError,
         "not a readable ONNX model"),
        (lambda d: d / "empty.onnx", InvalidModelError,
         "not a readable ONNX model"),
        (lambda d: d / "missing", SourceError, "does not exist"),
    ],
)
def test_bad_local_sources(settings: Settings, tmp_path: Path, make: object, error: type[AxonError],
                           fragment: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.onnx").touch()
    path = make(tmp_path / "in")  # type: ignore[operator]
    with pytest.raises(error) as info:
        install(parse_spec("acme/bad@1"), settings, from_=str(path))
    assert fragment in str(info.value)
    assert not StoreLayout(settings.cache_dir).version_dir(parse_spec("acme/bad@1")).exists()
    staging = StoreLayout(settings.cache_dir).staging
    assert not staging.exists() or list(staging.iterdir()) == []


def test_directory_without_onnx_and_with_two(settings: Settings, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "README.md").write_text("x")
    with pytest.raises(InvalidModelError, match=r"no \.onnx file"):
        install(parse_spec("acme/x@1"), settings, from_=str(d))
    write_mlp(d / "a.onnx")
    write_mlp(d / "b.onnx", seed=3)
    with pytest.raises(InvalidModelError, match="several ONNX files"):
        install(parse_spec("acme/x@1"), settings, from_=str(d))
    r = install(parse_spec("acme/x@1"), settings, from_=str(d), entrypoint="b.onnx")
    assert r.manifest.entrypoint == "b.onnx"


def test_symlink_pointing_outside_is_refused(settings: Settings, tmp_path: Path) -> None:
    d = mlp_dir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    (d / "leak.txt").symlink_to(secret)
    with pytest.raises(UsageError, match="points outside the model directory"):
        install(parse_spec("acme/x@1"), settings, from_=str(d))
    os.unlink(d / "leak.txt")
    (d / "alias.json").symlink_to(d / "config.json")  # inside: followed, stored as a regular file
    r = install(parse_spec("acme/x@1"), settings, from_=str(d))
    assert (r.path / "alias.json").read_text() == (d / "config.json").read_text()
    assert not (r.path / "alias.json").is_symlink()


def test_non_hub_spec_needs_from(settings: Settings) -> None:
    with pytest.raises(UsageError, match="only hf/ORG/REPO specs download by name") as info:
        install(parse_spec("acme/x@1"), settings)
    assert info.value.hint and "--from" in info.value.hint


def test_stale_staging_from_a_killed_process_is_cleaned(settings: Settings, tmp_path: Path) -> None:
    layout = StoreLayout(settings.cache_dir)
    layout.ensure_internal()
    stale = layout.staging / "acme--x--1.999999999.abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    install(parse_spec("acme/x@1"), settings, from_=str(mlp_dir(tmp_path)))
    assert not stale.exists()
