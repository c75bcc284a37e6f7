"""A full disk mid-install: one clear error, nothing partial visible, staging removed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from axon.errors import DiskFullError
from axon.install import install
from axon.settings import Settings
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.file_server import FileServer
from tests.support.onnx_models import mlp_model, write_mlp


@pytest.fixture
def tiny_cache(tmp_path: Path, isolated_env: dict[str, str]) -> Iterator[Settings]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield Settings.from_env({**isolated_env, "AXON_CACHE_DIR": str(mnt)})
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _nothing_partial(settings: Settings, spec: str) -> None:
    layout = StoreLayout(settings.cache_dir)
    assert not layout.version_dir(parse_spec(spec)).exists()
    assert list(layout.staging.iterdir()) == []


def test_local_copy_fills_the_disk(tiny_cache: Settings, tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "src" / "model.onnx", features=1024, out=512)  # ~2 MiB > 1 MiB tmpfs
    with pytest.raises(DiskFullError) as info:
        install(parse_spec("acme/big@1"), tiny_cache, from_=str(model))
    assert "Disk full" in str(info.value) and "\n" not in str(info.value)
    _nothing_partial(tiny_cache, "acme/big@1")


def test_url_download_fills_the_disk(tiny_cache: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    fs.files["big.onnx"] = mlp_model(features=1024, out=512).SerializeToString()
    with pytest.raises(DiskFullError):
        install(parse_spec("acme/big@1"), tiny_cache, from_=f"{url}/files/big.onnx")
    _nothing_partial(tiny_cache, "acme/big@1")


def test_hub_install_checks_free_space_before_downloading(tiny_cache: Settings, hub: tuple[object, str]) -> None:
    fake, url = hub
    fake.add_commit("org/big", {"model.onnx": mlp_model(features=1024, out=512).SerializeToString()})  # type: ignore[attr-defined]
    settings = Settings.from_env({"AXON_CACHE_DIR": str(tiny_cache.cache_dir), "HF_ENDPOINT": url,
                                  "AXON_HOME": str(tiny_cache.home)})
    with pytest.raises(DiskFullError, match="Not enough disk space"):
        install(parse_spec("hf/org/big"), settings)
    assert not [p for m, p, _ in fake.requests if m == "GET" and "/resolve/" in p]  # type: ignore[attr-defined]
    _nothing_partial(settings, "hf/org/big")
