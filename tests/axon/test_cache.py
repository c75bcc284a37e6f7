from __future__ import annotations

import os
from pathlib import Path

import pytest

from axon import cache
from axon.errors import IntegrityError, NotInstalledError
from axon.install import install
from axon.settings import Settings
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.packages import mlp_dir


def _install(settings: Settings, tmp_path: Path, spec: str, seed: int = 0) -> cache.CachedModel:
    install(parse_spec(spec), settings, from_=str(mlp_dir(tmp_path, seed=seed)))
    return cache.get_installed(settings.cache_dir, parse_spec(spec))


def test_list_covers_one_and_two_level_names(settings: Settings, tmp_path: Path) -> None:
    _install(settings, tmp_path, "acme/a@1")
    _install(settings, tmp_path, "acme/a@2", seed=1)
    _install(settings, tmp_path, "hf/org/repo@main", seed=2)
    specs = [str(m.spec) for m in cache.list_installed(settings.cache_dir)]
    assert specs == ["acme/a@1", "acme/a@2", "hf/org/repo@main"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "extra"])
def test_verify_catches_damage(settings: Settings, tmp_path: Path, damage: str) -> None:
    model = _install(settings, tmp_path, "acme/a@1")
    target = model.path / "model.onnx"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-1])
    elif damage == "delete":
        target.unlink()
    else:
        (model.path / "dropped-in.bin").write_bytes(b"?")
    report = cache.verify(settings.cache_dir, model.spec)
    assert not report.ok
    kind = {"flip": "xxh3_128", "truncate": "size", "delete": "missing", "extra": "unexpected"}[damage]
    assert [p.kind for p in report.problems] == [kind]
    with pytest.raises(IntegrityError) as info:
        report.raise_for_problems()
    assert info.value.exit_code == 3


def test_verify_reports_sha256_only_mismatch(settings: Settings, tmp_path: Path) -> None:
    import yaml

    model = _install(settings, tmp_path, "acme/a@1")
    mpath = model.path / "manifest.yaml"
    data = yaml.safe_load(mpath.read_text())
    data["spec"]["files"][0]["sha256"] = "0" * 64  # xxh3 still matches: the sha256 pass must catch it
    mpath.write_text(yaml.safe_dump(data))
    report = cache.verify(settings.cache_dir, model.spec)
    assert [p.kind for p in report.problems] == ["sha256"]


def test_remove_and_not_installed(settings: Settings, tmp_path: Path) -> None:
    model = _install(settings, tmp_path, "acme/a@1")
    cache.remove(settings.cache_dir, model.spec)
    assert not model.path.exists()
    assert not (settings.cache_dir / "acme").exists()  # empty parents pruned
    with pytest.raises(NotInstalledError) as info:
        cache.remove(settings.cache_dir, model.spec)
    assert info.value.hint == "Install it with: axon install acme/a@1"


def test_gc_removes_incomplete_versions_and_leftovers(settings: Settings, tmp_path: Path) -> None:
    good = _install(settings, tmp_path, "acme/a@1")
    no_manifest = settings.cache_dir / "acme" / "b" / "1"
    no_manifest.mkdir(parents=True)
    (no_manifest / "model.onnx").write_bytes(b"half")
    bad_manifest = settings.cache_dir / "acme" / "c" / "1"
    bad_manifest.mkdir(parents=True)
    (bad_manifest / "manifest.yaml").write_text("not: [valid")
    layout = StoreLayout(settings.cache_dir)
    (layout.staging / "acme--d--1.999999999.x").mkdir(parents=True)
    (layout.downloads / "abc.part").write_bytes(b"x" * 5000)
    stats = cache.stats(settings.cache_dir)
    assert stats["versions"] == 1 and len(stats["incomplete_versions"]) == 2
    assert stats["partial_downloads_bytes"] > 0
    dry = cache.gc(settings.cache_dir, dry_run=True)
    assert len(dry.removed) == 4 and no_manifest.exists()
    report = cache.gc(settings.cache_dir)
    assert set(report.removed) == {str(no_manifest), str(bad_manifest), str(layout.staging / "acme--d--1.999999999.x"),
                                   str(layout.downloads / "abc.part")}
    assert report.bytes_freed > 0
    assert not no_manifest.exists() and not bad_manifest.exists()
    assert good.path.exists() and cache.verify(settings.cache_dir, good.spec).ok
    assert cache.gc(settings.cache_dir).removed == []


def test_gc_keeps_a_partial_download_in_use(settings: Settings) -> None:
    import fcntl

    layout = StoreLayout(settings.cache_dir)
    layout.ensure_internal()
    part = layout.downloads / "busy.part"
    part.write_bytes(b"x")
    fd = os.open(part, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert str(part) not in cache.gc(settings.cache_dir).removed
        assert part.exists()
    finally:
        os.close(fd)
