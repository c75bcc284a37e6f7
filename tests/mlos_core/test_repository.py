"""Registration accepts only verified models from inside the production repository."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from axon.settings import Settings
from tests.support.core_server import core_server


def _copy_version_as(good: Path, repo: Path, name: str, extra_file: dict[str, object] | None = None) -> Path:
    """Copy the published version *good* to demo/<name>/1 in *repo* (writable), renamed in its manifest."""
    dest = repo / "demo" / name / "1"
    shutil.copytree(good, dest)
    for p in [dest, *dest.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    m = yaml.safe_load((dest / "manifest.yaml").read_text())
    m["metadata"]["name"] = name
    if extra_file is not None:
        m["spec"]["files"].append(extra_file)
    (dest / "manifest.yaml").write_text(yaml.safe_dump(m))
    return dest


def test_containment_attacks_are_refused(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    root = settings.publish_dir
    good = root / "demo" / "mlp" / "1"
    repo = tmp_path / "repo"
    shutil.copytree(root, repo, symlinks=True, ignore=shutil.ignore_patterns("core"))
    # A sibling sharing the root's prefix, holding a perfectly valid model.
    evil = Path(str(repo) + "-evil")
    shutil.copytree(good, evil / "demo" / "mlp" / "1")
    # A symlink inside the repository pointing out of it.
    (repo / "demo" / "escape").symlink_to(evil / "demo" / "mlp")
    # A manifest listing ../../etc/passwd.
    _copy_version_as(good, repo, "bad", extra_file={"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64,
                                                    "xxh3_128": "0" * 32})
    # A published file whose content changed after publishing.
    changed = _copy_version_as(good, repo, "changed")
    data = bytearray((changed / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (changed / "model.onnx").write_bytes(bytes(data))
    attacks = [
        ({"manifest_path": str(evil / "demo" / "mlp" / "1" / "manifest.yaml")}, 403),
        ({"manifest_path": str(repo / "demo" / "escape" / "1")}, 403),
        ({"path": "demo/mlp/../../../etc"}, 400),
        ({"model_path": str(repo) + "/demo/mlp/1/../../../../tmp"}, 400),
        ({"model_id": "demo/bad@1"}, 400),
        ({"manifest_path": str(settings.cache_dir / "demo" / "mlp" / "1" / "manifest.yaml")}, 403),
        ({"model_id": "demo/changed@1"}, 409),
        ({"model_id": "../etc/passwd"}, 400),
        ({"model_id": "demo/missing@1"}, 404),
    ]
    with core_server(repo, tmp_path) as c:
        for body, expected in attacks:
            status, answer, _ = c.call("POST", "/models/register", body)
            assert status == expected, (body, answer)
            assert answer["status"] == "error" and answer["message"]
        assert c.call("GET", "/models")[1]["models"] == []
        status, answer, _ = c.call("POST", "/models/register", {"manifest_path": "demo/mlp/1"})
        assert status == 201, answer
