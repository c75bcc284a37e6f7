"""Native ``_fastio`` and the pure-Python reference must agree on every input."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from axon.store import fastio

CHUNK = fastio.HASH_CHUNK_BYTES
SIZES = [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17]


def _impls() -> list[object]:
    impls: list[object] = [pytest.param("pure", id="pure")]
    impls.append(pytest.param("native", id="native", marks=pytest.mark.skipif(
        not fastio.native_available(), reason="axon.store._fastio is not built")))
    return impls


@pytest.fixture(params=_impls())
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def hash_with(impl: str, path: Path) -> fastio.FileDigest:
    if impl == "pure":
        return fastio.hash_file_py(path)
    return fastio.hash_file(path)


def copy_with(impl: str, src: Path, dst: Path) -> tuple[int, str]:
    if impl == "pure":
        return fastio.copy_file_py(src, dst)
    return fastio.copy_file(src, dst)


def within_with(impl: str, root: Path | str, path: Path | str) -> bool:
    if impl == "pure":
        return fastio.is_within_py(root, path)
    return fastio.is_within(root, path)


def _data(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size] if size else b""


@pytest.mark.parametrize("size", SIZES)
def test_hash_file_matches_hashlib_and_xxhash(impl: str, tmp_path: Path, size: int) -> None:
    data = _data(size)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    d = hash_with(impl, p)
    assert d.size == size
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.xxh3_128 == xxhash.xxh3_128(data).hexdigest()


def test_hash_file_reports_progress(impl: str, tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(_data(2 * CHUNK + 5))
    seen: list[int] = []
    if impl == "pure":
        fastio.hash_file_py(p, seen.append)
    else:
        fastio.hash_file(p, progress=seen.append)
    assert sum(seen) == 2 * CHUNK + 5


@pytest.fixture(scope="module")
def sparse_2gib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    """A sparse file just over 2 GiB and its digests, computed once with hashlib/xxhash."""
    p = tmp_path_factory.mktemp("sparse") / "sparse.bin"
    size = (2 << 30) + 12345
    with open(p, "wb") as f:
        f.seek(size - 3)
        f.write(b"end")
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    zeros = bytes(CHUNK)
    remaining = size - 3
    while remaining:
        n = min(CHUNK, remaining)
        sha.update(zeros[:n])
        xxh.update(zeros[:n])
        remaining -= n
    sha.update(b"end")
    xxh.update(b"end")
    return p, size, sha.hexdigest(), xxh.hexdigest()


def test_hash_file_over_2gib_sparse(impl: str, sparse_2gib: tuple[Path, int, str, str]) -> None:
    path, size, sha, xxh = sparse_2gib
    d = hash_with(impl, path)
    assert (d.size, d.sha256, d.xxh3_128) == (size, sha, xxh)


def test_hash_file_errors_carry_errno_and_name(impl: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError) as info:
        hash_with(impl, missing)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)
    with pytest.raises(IsADirectoryError):
        hash_with(impl, tmp_path)


@pytest.mark.parametrize("size", SIZES)
def test_copy_file_exact(impl: str, tmp_path: Path, size: int) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(_data(size))
    os.chmod(src, 0o640)
    dst.write_bytes(b"old content that is longer than some sources" * 1000)
    copied, method = copy_with(impl, src, dst)
    assert copied == size
    assert dst.read_bytes() == src.read_bytes()
    assert (dst.stat().st_mode & 0o777) == 0o640
    assert method in (("empty",) if size == 0 else ("copy_file_range", "readwrite"))


def test_copy_file_over_2gib_sparse(impl: str, tmp_path: Path) -> None:
    src, dst = tmp_path / "sparse.bin", tmp_path / "copy.bin"
    size = (2 << 30) + 7
    with open(src, "wb") as f:
        f.seek(size - 4)
        f.write(b"tail")
    copied, _ = copy_with(impl, src, dst)
    assert copied == size == dst.stat().st_size
    with open(dst, "rb") as f:
        f.seek(size - 4)
        assert f.read() == b"tail"


def test_copy_file_missing_source(impl: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        copy_with(impl, tmp_path / "nope", tmp_path / "dst")
    assert info.value.filename == str(tmp_path / "nope")


def test_copy_file_across_filesystems_falls_back(impl: str, tmp_path: Path) -> None:
    # /dev/shm is a tmpfs: copy_file_range from there to the test disk may fail with EXDEV.
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm to copy across filesystems")
    src = shm / f"axon-test-{os.getpid()}.bin"
    try:
        src.write_bytes(_data(CHUNK + 3))
        dst = tmp_path / "dst.bin"
        copied, _ = copy_with(impl, src, dst)
        assert copied == CHUNK + 3
        assert dst.read_bytes() == src.read_bytes()
    finally:
        src.unlink(missing_ok=True)


def test_is_within_boundaries(impl: str, tmp_path: Path) -> None:
    root = tmp_path / "models"
    evil = tmp_path / "models-evil"
    (root / "ns" / "m" / "1").mkdir(parents=True)
    (evil / "x").mkdir(parents=True)
    (root / "ns" / "m" / "1" / "model.onnx").write_bytes(b"x")
    (root / "escape").symlink_to(evil / "x")
    (root / "inner-link").symlink_to(root / "ns")
    cases = {
        root: True,
        root / "ns": True,
        root / "ns" / "m" / "1" / "model.onnx": True,
        root / "ns" / ".." / "ns": True,
        root / "inner-link" / "m": True,
        evil: False,
        evil / "x": False,
        root / "escape": False,
        root / "ns" / ".." / ".." / "models-evil": False,
        root / "does-not-exist": False,
        tmp_path: False,
        Path("/"): False,
    }
    for path, expected in cases.items():
        assert within_with(impl, root, path) is expected, path
        assert within_with(impl, str(root) + "/", path) is expected, path
    assert within_with(impl, tmp_path / "no-root", root) is False
    assert within_with(impl, "/", root) is True


def test_is_within_agrees_with_realpath_commonpath(impl: str, tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "r2").mkdir()
    for p in [root, root / "a", root / "a" / "b", tmp_path / "r2", tmp_path, root / "a" / ".." / ".." / "r2"]:
        rp, rr = os.path.realpath(p), os.path.realpath(root)
        expected = os.path.commonpath([rp, rr]) == rr
        assert within_with(impl, root, p) is expected


def test_rename_exchange_swaps(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    fastio.rename_exchange(a, b)
    assert (a / "f").read_text() == "B"
    assert (b / "f").read_text() == "A"
    with pytest.raises(FileNotFoundError):
        fastio.rename_exchange(a, tmp_path / "missing")
