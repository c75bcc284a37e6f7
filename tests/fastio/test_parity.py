"""Native ``_fastio`` and the pure-Python reference must agree on every input."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.store import fastio

CHUNK = fastio.HASH_CHUNK_BYTES
native_only = pytest.mark.skipif(not fastio.native_available(), reason="axon.store._fastio is not built")
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


# --- copy_files: one scheduler, native or reference per-file work ------------------------


def copy_files_with(impl: str, pairs: list[tuple[Path, Path]], **kw: object) -> list[fastio.CopyResult]:
    if impl == "pure":
        return fastio.copy_files_py(pairs, **kw)  # type: ignore[arg-type]
    return fastio.copy_files(pairs, **kw)  # type: ignore[arg-type]


MODES = [0o600, 0o640, 0o644, 0o755, 0o444, 0o4750]


def make_sources(root: Path, sizes: list[int], modes: list[int] | None = None) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, size in enumerate(sizes):
        p = root / f"f{i:03d}.bin"
        p.write_bytes(bytes([i % 251]) * 7 + _data(size)[7:] if size >= 7 else _data(size))
        os.chmod(p, (modes or MODES)[i % len(modes or MODES)])
        out.append(p)
    return out


def make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"head")
        f.seek(size - 4)
        f.write(b"tail")


def outcome(results: list[fastio.CopyResult], pairs: list[tuple[Path, Path]]) -> list[tuple[object, ...]]:
    """What must be the same whoever copied: sizes, digests, the bytes and mode of each copy."""
    assert [r.path for r in results] == [str(d) for _, d in pairs]
    return [(r.size, r.sha256, r.xxh3_128, d.read_bytes(), d.stat().st_mode & 0o7777)
            for r, (_, d) in zip(results, pairs, strict=True)]


def expected(pairs: list[tuple[Path, Path]], verify: bool) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for s, _ in pairs:
        data = s.read_bytes()
        sha, xxh = (hashlib.sha256(data).hexdigest(), xxhash.xxh3_128(data).hexdigest()) if verify else (None, None)
        out.append((len(data), sha, xxh, data, s.stat().st_mode & 0o7777))
    return out


@pytest.mark.parametrize(("verify", "durable", "workers"), [
    (False, False, 0), (True, False, 0), (False, True, 0), (True, True, 0), (True, True, 1), (True, False, 3)])
def test_copy_files_exact(impl: str, tmp_path: Path, verify: bool, durable: bool, workers: int) -> None:
    srcs = make_sources(tmp_path / "src", [*SIZES, 9 << 20])  # one large file: fsynced by itself when durable
    make_sparse(tmp_path / "src" / "sparse.bin", (9 << 20) + 5)  # bytes the copy never sees: hashed afterwards
    srcs.append(tmp_path / "src" / "sparse.bin")
    (tmp_path / "dst").mkdir()
    pairs = [(s, tmp_path / "dst" / s.name) for s in srcs]
    seen: list[int] = []
    results = copy_files_with(impl, pairs, verify=verify, durable=durable, workers=workers, progress=seen.append)
    assert outcome(results, pairs) == expected(pairs, verify)
    assert sum(seen) <= sum(s.stat().st_size for s in srcs)  # holes are not copied, so not counted


@native_only
def test_copy_files_native_and_reference_agree(tmp_path: Path) -> None:
    srcs = make_sources(tmp_path / "src", [*SIZES, 9 << 20, 17 << 20])
    for verify, durable in [(False, False), (True, False), (True, True)]:
        outcomes = []
        for impl in ("pure", "native"):
            out = tmp_path / f"{impl}-{verify}-{durable}"
            out.mkdir()
            pairs = [(s, out / s.name) for s in srcs]
            outcomes.append(outcome(copy_files_with(impl, pairs, verify=verify, durable=durable), pairs))
        assert outcomes[0] == outcomes[1], (verify, durable)


def test_copy_files_of_nothing(impl: str) -> None:
    assert copy_files_with(impl, [], verify=True, durable=True) == []


def test_copy_files_many_small_files(impl: str, tmp_path: Path) -> None:
    srcs = make_sources(tmp_path / "src", [i * 13 % 5000 + 1 for i in range(300)])
    (tmp_path / "dst").mkdir()
    pairs = [(s, tmp_path / "dst" / s.name) for s in srcs]
    seen: list[int] = []
    results = copy_files_with(impl, pairs, verify=True, durable=True, progress=seen.append)
    assert outcome(results, pairs) == expected(pairs, True)
    assert sum(seen) == sum(s.stat().st_size for s in srcs)


def test_copy_files_largest_first_in_both(impl: str, tmp_path: Path) -> None:
    # With one worker the files are copied one after the other, largest first; each is smaller
    # than one chunk of either implementation, so each reports its size once.
    sizes = [1000, 70000, 5, 300000, 4096]
    srcs = make_sources(tmp_path / "src", sizes)
    (tmp_path / "dst").mkdir()
    seen: list[int] = []
    copy_files_with(impl, [(s, tmp_path / "dst" / s.name) for s in srcs], workers=1, progress=seen.append)
    assert seen == sorted(sizes, reverse=True)


def test_copy_files_spreads_over_threads_in_both(impl: str, tmp_path: Path) -> None:
    srcs = make_sources(tmp_path / "src", [CHUNK + 1] * 4)
    (tmp_path / "dst").mkdir()
    threads: set[str] = set()
    copy_files_with(impl, [(s, tmp_path / "dst" / s.name) for s in srcs], workers=2,
                    progress=lambda n: threads.add(threading.current_thread().name))
    assert threads and all(name.startswith("axon-copy") for name in threads)


def test_copy_files_missing_source(impl: str, tmp_path: Path) -> None:
    srcs = make_sources(tmp_path / "src", [CHUNK + 1, 10, 3 * CHUNK])
    missing = tmp_path / "src" / "missing.bin"
    (tmp_path / "dst").mkdir()
    pairs = [(s, tmp_path / "dst" / s.name) for s in [*srcs, missing]]
    with pytest.raises(FileNotFoundError) as info:
        copy_files_with(impl, pairs, verify=True, durable=True)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)
    assert list((tmp_path / "dst").iterdir()) == []  # what was written before the failure is removed


def test_copy_files_existing_destination(impl: str, tmp_path: Path) -> None:
    (src,) = make_sources(tmp_path / "src", [100])
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / src.name).write_bytes(b"keep me")
    with pytest.raises(FileExistsError) as info:
        copy_files_with(impl, [(src, tmp_path / "dst" / src.name)])
    assert info.value.filename == str(tmp_path / "dst" / src.name)
    assert (tmp_path / "dst" / src.name).read_bytes() == b"keep me"


@pytest.mark.parametrize("work", ["copy", "hash"])
def test_a_set_cancel_flag_stops_the_per_file_work(impl: str, tmp_path: Path, work: str) -> None:
    """fastio.Cancel is the one flag both implementations' per-file code checks between chunks."""
    src = tmp_path / "src.bin"
    src.write_bytes(_data(3 * CHUNK))
    cancel = fastio.Cancel()
    cancel.set()
    with pytest.raises(KeyboardInterrupt):
        if work == "hash" and impl == "pure":
            fastio.hash_file_py(src, cancel=cancel)
        elif work == "hash":
            fastio._native.hash_file(src, cancel=cancel)  # type: ignore[union-attr]
        elif impl == "pure":
            fastio.copy_file_ex_py(src, tmp_path / "dst.bin", cancel=cancel)
        else:
            fastio._native.copy_file_ex(src, tmp_path / "dst.bin", method="readwrite", cancel=cancel)  # type: ignore[union-attr]
    assert not (tmp_path / "dst.bin").exists()


@native_only
def test_the_scheduler_and_the_native_code_agree_on_a_large_file() -> None:
    assert fastio._native.LARGE_FILE_BYTES == fastio._LARGE_FILE_BYTES  # type: ignore[union-attr]


_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]
file_specs = st.lists(st.tuples(st.one_of(st.sampled_from(SIZES), st.integers(0, 3 * CHUNK)), st.sampled_from(MODES)),
                      max_size=8)


@native_only
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=_CHECKS)
@given(files=file_specs, verify=st.booleans(), durable=st.booleans(), workers=st.integers(0, 3))
def test_copy_files_native_and_reference_agree_on_any_files(files: list[tuple[int, int]], verify: bool,
                                                            durable: bool, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        srcs = make_sources(root / "src", [size for size, _ in files], [mode for _, mode in files] or None)
        outcomes = []
        for impl in ("pure", "native"):
            (root / impl).mkdir()
            pairs = [(s, root / impl / s.name) for s in srcs]
            outcomes.append(outcome(copy_files_with(impl, pairs, verify=verify, durable=durable, workers=workers),
                                    pairs))
        assert outcomes[0] == outcomes[1] == expected(pairs, verify)
