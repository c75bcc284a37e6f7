"""open_beneath: nothing below the root may lead outside it, whatever is swapped in."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from axon.store import fastio

native_only = pytest.mark.skipif(not fastio.native_available(), reason="axon.store._fastio is not built")


def _impls() -> list[object]:
    return [
        pytest.param("pure", id="pure"),
        pytest.param("native-openat2", id="native-openat2", marks=native_only),
        pytest.param("native-walk", id="native-walk", marks=native_only),
    ]


@pytest.fixture(params=_impls())
def opener(request: pytest.FixtureRequest) -> Callable[..., int]:
    if request.param == "pure":
        return fastio.open_beneath_py
    native = fastio._native
    assert native is not None
    use_openat2 = request.param == "native-openat2"
    return lambda root, rel, flags=os.O_RDONLY, mode=0o644: native.open_beneath(root, rel, flags, mode, use_openat2)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "ns" / "m" / "1").mkdir(parents=True)
    (root / "ns" / "m" / "1" / "model.onnx").write_bytes(b"weights")
    (tmp_path / "models-evil").mkdir()
    (tmp_path / "models-evil" / "secret").write_bytes(b"secret")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    (root / "ns" / "m" / "1" / "escape").symlink_to(tmp_path / "outside.txt")
    (root / "ns" / "m" / "1" / "escape-dir").symlink_to(tmp_path / "models-evil")
    (root / "ns" / "m" / "1" / "up").symlink_to("../../../../outside.txt")
    return root


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_opens_plain_paths(opener: Callable[..., int], repo: Path) -> None:
    assert _read(opener(repo, "ns/m/1/model.onnx")) == b"weights"
    assert _read(opener(str(repo), "ns//m/./1/model.onnx")) == b"weights"
    rootfd = os.open(repo, os.O_PATH | os.O_DIRECTORY)
    try:
        assert _read(opener(rootfd, "ns/m/1/model.onnx")) == b"weights"
    finally:
        os.close(rootfd)


@pytest.mark.parametrize("rel", ["ns/m/1/escape", "ns/m/1/escape-dir/secret", "ns/m/1/up", "../models-evil/secret",
                                 "ns/../../outside.txt", "/etc/passwd", ""])
def test_never_leaves_the_root(opener: Callable[..., int], repo: Path, rel: str) -> None:
    with pytest.raises(OSError) as info:
        os.close(opener(repo, rel))
    assert info.value.errno in (errno.EXDEV, errno.ELOOP, errno.ENOTDIR)


def test_missing_file(opener: Callable[..., int], repo: Path) -> None:
    with pytest.raises(FileNotFoundError):
        opener(repo, "ns/m/1/nope.onnx")


@native_only
def test_openat2_follows_symlinks_that_stay_inside(repo: Path) -> None:
    (repo / "ns" / "m" / "current").symlink_to("1")
    assert _read(fastio.open_beneath(repo, "ns/m/current/model.onnx")) == b"weights"
    with pytest.raises(OSError) as info:  # the walk fallback refuses every symlink
        fastio._native.open_beneath(repo, "ns/m/current/model.onnx", os.O_RDONLY, 0, False)  # type: ignore[union-attr]
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_swapped_symlink_after_a_check_cannot_escape(opener: Callable[..., int], repo: Path, tmp_path: Path) -> None:
    vdir = repo / "ns" / "m" / "1"
    assert fastio.is_within(repo, vdir / "model.onnx")  # the check passes...
    (vdir / "model.onnx").unlink()  # ...then an attacker swaps a symlink in
    (vdir / "model.onnx").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(OSError) as info:
        os.close(opener(repo, "ns/m/1/model.onnx"))
    assert info.value.errno in (errno.EXDEV, errno.ELOOP)
