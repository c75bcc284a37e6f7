"""copy_tree: native and pure-Python reference agree; every fallback step is exercised."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from axon.store import fastio
from tests.support.mounts import tmpfs, xfs_reflink

CHUNK = fastio.HASH_CHUNK_BYTES
native_only = pytest.mark.skipif(not fastio.native_available(), reason="axon.store._fastio is not built")


def _impls() -> list[object]:
    return [pytest.param("pure", id="pure"), pytest.param("native", id="native", marks=native_only)]


@pytest.fixture(params=_impls())
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def copy_tree_with(impl: str, src: Path, dst: Path, **kw: object) -> list[fastio.CopyResult]:
    if impl == "pure":
        return fastio.copy_tree_py(src, dst, **kw)  # type: ignore[arg-type]
    return fastio.copy_tree(src, dst, **kw)  # type: ignore[arg-type]


def _data(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 8
    return (block * (size // len(block) + 1))[:size]


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "empty": b"",
        "one": b"x",
        "chunk-1": _data(CHUNK - 1, 1),
        "chunk": _data(CHUNK, 2),
        "chunk+1": _data(CHUNK + 1, 3),
        "big/weights.bin": _data(5 * CHUNK + 123, 4),
    }
    files.update({f"small/{i:03d}.json": _data(i * 7 + 1, i) for i in range(150)})
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(root / "one", 0o640)
    os.chmod(root / "small", 0o750)
    (root / "link-to-one").symlink_to("one")
    return files


def _snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode & 0o7777, "")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, p.read_bytes())
    return out


@pytest.mark.parametrize("verify", [False, True])
def test_copy_tree_exact(impl: str, tmp_path: Path, verify: bool) -> None:
    files = make_tree(tmp_path / "src")
    results = copy_tree_with(impl, tmp_path / "src", tmp_path / "dst", verify=verify, durable=True)
    assert _snapshot(tmp_path / "dst") == _snapshot(tmp_path / "src")
    assert [r.path for r in results] == sorted(files)
    for r in results:
        assert r.size == len(files[r.path])
        if verify:
            assert r.sha256 == hashlib.sha256(files[r.path]).hexdigest()
            assert r.xxh3_128 == xxhash.xxh3_128(files[r.path]).hexdigest()
        else:
            assert r.sha256 is None


def test_native_matches_reference(tmp_path: Path) -> None:
    if not fastio.native_available():
        pytest.skip("axon.store._fastio is not built")
    make_tree(tmp_path / "src")
    native = fastio.copy_tree(tmp_path / "src", tmp_path / "a", verify=True, workers=3)
    pure = fastio.copy_tree_py(tmp_path / "src", tmp_path / "b", verify=True)
    assert [(r.path, r.size, r.sha256, r.xxh3_128) for r in native] == [
        (r.path, r.size, r.sha256, r.xxh3_128) for r in pure]
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")


def test_progress_counts_every_byte(impl: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    seen: list[int] = []
    copy_tree_with(impl, tmp_path / "src", tmp_path / "dst", progress=seen.append)
    assert sum(seen) == sum(len(d) for d in files.values())


def test_sparse_file_over_2gib_keeps_holes(impl: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = (2 << 30) + 4096 * 3 + 5
    with open(src / "sparse.bin", "wb") as f:
        f.write(b"head")
        f.seek(1 << 30)
        f.write(b"middle")
        f.seek(size - 4)
        f.write(b"tail")
    (r,) = copy_tree_with(impl, src, tmp_path / "dst")
    out = tmp_path / "dst" / "sparse.bin"
    assert r.size == size == out.stat().st_size
    with open(out, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(1 << 30)
        assert f.read(6) == b"middle"
        f.seek(size - 4)
        assert f.read() == b"tail"
    assert out.stat().st_blocks * 512 < 64 << 20  # holes preserved: not 2 GiB of zeros


@pytest.mark.parametrize("kind", ["fifo", "unreadable"])
def test_refuses_what_it_cannot_copy(impl: str, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    make_tree(src)
    if kind == "fifo":
        os.mkfifo(src / "pipe")
        expected: type[OSError] = OSError
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads mode-000 files; the unreadable case runs as a normal user in "
                        "test_unreadable_as_unprivileged_user")
        (src / "secret").write_bytes(b"s")
        os.chmod(src / "secret", 0)
        expected = PermissionError
    with pytest.raises(expected):
        copy_tree_with(impl, src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()  # everything created was removed


def test_unreadable_as_unprivileged_user(tmp_path: Path) -> None:
    """Root reads everything; drop CAP_DAC_OVERRIDE/READ_SEARCH so a mode-000 file is unreadable."""
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and util-linux setpriv to drop the DAC capabilities")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"fine")
    (src / "secret").write_bytes(b"s")
    os.chmod(src / "secret", 0)
    code = ("import sys\nfrom axon.store import fastio\nimpl = sys.argv[1]\n"
            "f = fastio.copy_tree if impl == 'native' else fastio.copy_tree_py\n"
            "try:\n    f(sys.argv[2], sys.argv[3])\nexcept PermissionError as e:\n"
            "    print('EACCES', e.filename)\n")
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
            "-dac_override,-dac_read_search"]
    for impl in ("pure", "native") if fastio.native_available() else ("pure",):
        dst = tmp_path / f"dst-{impl}"
        out = subprocess.run([*drop, sys.executable, "-c", code, impl, str(src), str(dst)], capture_output=True,
                             text=True, check=False)
        assert out.stdout.startswith("EACCES") and "secret" in out.stdout, out.stderr
        assert not dst.exists()


@native_only
@pytest.mark.parametrize("method", fastio.COPY_METHODS)
def test_each_method_of_the_chain(tmp_path: Path, method: str) -> None:
    files = make_tree(tmp_path / "src")
    results = fastio.copy_tree(tmp_path / "src", tmp_path / "dst", verify=True, method=method)
    assert _snapshot(tmp_path / "dst") == _snapshot(tmp_path / "src")
    used = {r.method for r in results if r.size}
    expected = {"reflink": {"copy_file_range", "reflink"}}.get(method, {method})  # ext4 has no reflink
    assert used <= expected and used
    for r in results:
        assert r.sha256 == hashlib.sha256(files[r.path]).hexdigest()


@native_only
def test_exdev_steps_down_across_filesystems(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "shm", "64m") as mnt:
        files = make_tree(mnt / "src")
        results = fastio.copy_tree(mnt / "src", tmp_path / "dst", verify=True)
        assert _snapshot(tmp_path / "dst") == _snapshot(mnt / "src")
        # copy_file_range says EXDEV between tmpfs and the disk here; sendfile takes over.
        assert {r.method for r in results if r.size} <= {"copy_file_range", "sendfile"}
        for r in results:
            assert r.xxh3_128 == xxhash.xxh3_128(files[r.path]).hexdigest()


@native_only
def test_reflink_on_xfs(tmp_path: Path) -> None:
    with xfs_reflink(tmp_path / "xfs") as mnt:
        src = mnt / "src"
        files = make_tree(src)
        results = fastio.copy_tree(src, mnt / "dst", verify=True, durable=True)
        assert {r.method for r in results if r.size} == {"reflink"}
        assert _snapshot(mnt / "dst") == _snapshot(src)
        for r in results:
            assert r.sha256 == hashlib.sha256(files[r.path]).hexdigest()


def test_enospc_is_clear_and_leaves_nothing(impl: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(_data(3 << 20))
    (src / "b.bin").write_bytes(_data(3 << 20, 1))
    with tmpfs(tmp_path / "tiny", "4m") as mnt:
        with pytest.raises(OSError) as info:
            copy_tree_with(impl, src, mnt / "dst")
        assert info.value.errno == errno.ENOSPC
        assert info.value.filename and "dst" in str(info.value.filename)
        assert not (mnt / "dst").exists()
        assert os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize > 3 << 20  # space given back


@native_only
@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "readwrite"])
def test_signals_during_the_copy_eintr(tmp_path: Path, method: str) -> None:
    """A storm of SIGALRMs interrupts syscalls (EINTR) and short copies; the result stays exact."""
    data = _data(96 << 20, 7)
    (tmp_path / "src.bin").write_bytes(data)
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *_: hits.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        for i in range(3):
            size, used, sha, _ = fastio._native.copy_file_ex(  # type: ignore[union-attr]
                tmp_path / "src.bin", tmp_path / f"dst{i}.bin", verify=True, method=method)
            assert (size, used, sha) == (len(data), method, hashlib.sha256(data).hexdigest())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits


@native_only
@pytest.mark.parametrize(("method", "verify", "files", "pause"), [
    ("readwrite", False, 2, 0.01),  # 1 MiB chunks: ~2.5 s per file
    ("copy_file_range", True, 1, 0.05),  # 8 MiB kernel chunks, sha256 on its helper thread: ~1.6 s
])
def test_ctrl_c_stops_a_big_copy_within_a_second(tmp_path: Path, method: str, verify: bool, files: int,
                                                 pause: float) -> None:
    _interrupt_a_big_copy(tmp_path, files, pause, lambda src, dst, progress: fastio.copy_tree(
        src, dst, method=method, verify=verify, progress=progress))


def test_ctrl_c_stops_the_reference_copy_too(tmp_path: Path) -> None:
    """The same scheduler drives the pure-Python copies: Ctrl-C stops them between chunks."""
    _interrupt_a_big_copy(tmp_path, 2, 0.01, lambda src, dst, progress: fastio.copy_tree_py(
        src, dst, verify=True, progress=progress))


def _interrupt_a_big_copy(tmp_path: Path, files: int, pause: float,
                          copy: Callable[[Path, Path, Callable[[int], None]], object]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(files):
        (src / f"w{i}.bin").write_bytes(_data(256 << 20, i))
    dst = tmp_path / "dst"
    started, finished = threading.Event(), threading.Event()

    copied: list[int] = []

    def slow_progress(n: int) -> None:
        copied.append(n)
        started.set()
        time.sleep(pause)  # long enough to be interrupted mid-file

    def interrupt() -> None:
        if started.wait(10):
            time.sleep(0.3)
            if not finished.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    # A job started in the background by a non-interactive shell inherits SIGINT as ignored, and
    # Python then never raises KeyboardInterrupt: install the usual handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt, daemon=True).start()
    interrupted = False
    try:
        copy(src, dst, slow_progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        finished.set()
        signal.signal(signal.SIGINT, previous)
    assert interrupted, "the copy finished before Ctrl-C arrived"
    # Stopped mid-file, between chunks: far from the 512 MiB a finished copy would report.
    assert 0 < sum(copied) < 256 << 20
    assert not dst.exists()
    assert not _sha_helper_running()



def _resident_fraction(path: Path) -> float:
    """Fraction of *path*'s pages in the page cache (mincore on a private mapping)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        anchor = ctypes.c_char.from_buffer(m)
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec)
        del anchor
        assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec) / pages


@native_only
@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "readwrite"])
def test_verified_durable_copy_larger_than_the_writeback_window(tmp_path: Path, method: str) -> None:
    """Many kernel chunks, each hashed right after it lands and dropped once on disk: digests
    and bytes stay exact for a file bigger than the writeback window."""
    src = tmp_path / "src"
    src.mkdir()
    data = _data((72 << 20) + 4097, 9)
    (src / "weights.bin").write_bytes(data)
    (src / "config.json").write_bytes(b"{}")
    results = {r.path: r for r in fastio.copy_tree(src, tmp_path / "dst", verify=True, durable=True, method=method)}
    big = results["weights.bin"]
    assert big.method == method
    assert big.sha256 == hashlib.sha256(data).hexdigest()
    assert big.xxh3_128 == xxhash.xxh3_128(data).hexdigest()
    assert (tmp_path / "dst" / "weights.bin").read_bytes() == data


@native_only
def test_durable_copy_leaves_the_page_cache_as_it_was(tmp_path: Path) -> None:
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {fstype}: its pages are the file and cannot be dropped")
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(_data(96 << 20, 5))
    fastio.copy_tree(src, tmp_path / "dst", durable=True, verify=True)
    # The copy's pages were written back and dropped; a page cache that kept them would be
    # a 20 GB publish evicting a serving machine's hot model.
    assert _resident_fraction(tmp_path / "dst" / "weights.bin") < 0.25


def _sha_helper_running() -> bool:
    return any(t.name == "axon-copy-sha256" for t in threading.enumerate())


@native_only
@pytest.mark.parametrize("split", [True, False])
def test_verified_copy_of_one_large_file_hashes_sha256_beside_the_copy(tmp_path: Path, split: bool) -> None:
    """With a core to spare, a large file's sha256 runs on a helper thread while this one copies,
    reads back and computes xxh3: both digests stay those of the bytes, in order."""
    data = _data((40 << 20) + 123, 11)
    (tmp_path / "src.bin").write_bytes(data)
    seen: list[bool] = []
    size, used, sha, xxh = fastio._native.copy_file_ex(  # type: ignore[union-attr]
        tmp_path / "src.bin", tmp_path / "dst.bin", verify=True, durable=True,
        progress=lambda n: seen.append(_sha_helper_running()), method="copy_file_range", hash_pipeline=split)
    assert (size, used) == (len(data), "copy_file_range")
    assert (sha, xxh) == (hashlib.sha256(data).hexdigest(), xxhash.xxh3_128(data).hexdigest())
    assert any(seen) == split and not _sha_helper_running()
    # copy_tree turns it on by itself when fewer large files than cores are copied at once
    src = tmp_path / "tree"
    src.mkdir()
    os.link(tmp_path / "src.bin", src / "weights.bin")
    seen.clear()
    (row,) = fastio.copy_tree(src, tmp_path / "tree-copy", verify=True, progress=lambda n: seen.append(
        _sha_helper_running()))
    assert row.sha256 == sha and any(seen) == ((os.cpu_count() or 1) > 1)


@native_only
def test_a_failing_verified_copy_stops_its_sha256_helper(tmp_path: Path) -> None:
    data = _data(12 << 20, 12)
    (tmp_path / "src.bin").write_bytes(data)
    with tmpfs(tmp_path / "tiny", "4m") as mnt:
        with pytest.raises(OSError) as info:
            fastio._native.copy_file_ex(  # type: ignore[union-attr]
                tmp_path / "src.bin", mnt / "dst.bin", verify=True, durable=True, method="copy_file_range",
                hash_pipeline=True)
        assert info.value.errno == errno.ENOSPC
        assert not (mnt / "dst.bin").exists()
    assert not _sha_helper_running()
