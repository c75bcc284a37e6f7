from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axon.errors import InvalidManifestError
from axon.store.manifest import FileEntry, Manifest, compute_integrity_digest, load_manifest, write_manifest


def _manifest(files: list[FileEntry] | None = None) -> Manifest:
    files = files or [FileEntry("model.onnx", 3, "a" * 64, "b" * 32)]
    return Manifest(namespace="acme", name="m", version="1", source={"type": "local", "path": "/x"},
                    entrypoint="model.onnx", opset=17, files=files)


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "manifest.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_round_trip(tmp_path: Path) -> None:
    m = _manifest([FileEntry("model.onnx", 3, "a" * 64, "b" * 32), FileEntry("tok/t.json", 5, "c" * 64, "d" * 32)])
    write_manifest(tmp_path, m)
    loaded = load_manifest(tmp_path / "manifest.yaml")
    assert loaded.to_dict() == m.to_dict()
    assert loaded.digest == compute_integrity_digest(m.files)
    text = (tmp_path / "manifest.yaml").read_text()
    assert "apiVersion: axon.mlos.io/v1" in text and "algorithm: xxh3_128" in text


def test_digest_depends_on_every_field_but_not_order() -> None:
    a = FileEntry("a", 1, "s", "x1")
    b = FileEntry("b", 2, "s", "x2")
    base = compute_integrity_digest([a, b])
    assert compute_integrity_digest([b, a]) == base
    assert compute_integrity_digest([a, FileEntry("b", 3, "s", "x2")]) != base
    assert compute_integrity_digest([a, FileEntry("b", 2, "s", "x3")]) != base
    assert compute_integrity_digest([a, FileEntry("c", 2, "s", "x2")]) != base


@pytest.mark.parametrize("bad_path", ["/etc/passwd", "../../etc/passwd", "a/../../b", "./model.onnx", "a\\b",
                                      "", "manifest.yaml"])
def test_unsafe_file_paths_make_the_manifest_invalid(tmp_path: Path, bad_path: str) -> None:
    data = _manifest().to_dict()
    data["spec"]["files"].append({"path": bad_path, "size": 1, "sha256": "0" * 64, "xxh3_128": "0" * 32})
    with pytest.raises(InvalidManifestError):
        load_manifest(_write(tmp_path, data))


def test_symlinked_path_resolving_outside_is_invalid(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    vdir = tmp_path / "v"
    vdir.mkdir()
    (vdir / "sub").symlink_to(outside)
    m = _manifest([FileEntry("model.onnx", 3, "a" * 64, "b" * 32), FileEntry("sub/w.bin", 1, "a" * 64, "b" * 32)])
    (vdir / "manifest.yaml").write_text(m.dump())
    with pytest.raises(InvalidManifestError, match="resolves outside"):
        load_manifest(vdir / "manifest.yaml")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(apiVersion="v0"), "apiVersion"),
        (lambda d: d.update(kind="Dataset"), "kind must be 'Model'"),
        (lambda d: d["integrity"].update(digest="0" * 32), "does not match its file list"),
        (lambda d: d["spec"]["format"].update(entrypoint="other.onnx"), "not among spec.files"),
        (lambda d: d["spec"]["files"][0].update(size=-1), "negative size"),
        (lambda d: d["spec"]["files"][0].update(size="3"), "wrong type"),
        (lambda d: d["spec"].pop("files"), "missing 'spec.files'"),
        (lambda d: d["source"].update(type="ftp"), "source.type"),
        (lambda d: d["spec"]["files"].append(dict(d["spec"]["files"][0])), "listed twice"),
    ],
)
def test_invalid_manifests_name_the_problem(tmp_path: Path, mutate: object, fragment: str) -> None:
    data = _manifest().to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(InvalidManifestError) as info:
        load_manifest(_write(tmp_path, data))
    assert fragment in str(info.value)


def test_not_yaml_and_missing(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("a: [")
    with pytest.raises(InvalidManifestError, match="not valid YAML"):
        load_manifest(tmp_path / "manifest.yaml")
    with pytest.raises(InvalidManifestError, match="No manifest"):
        load_manifest(tmp_path / "nope" / "manifest.yaml")
