"""Typed entry points to axon's hot paths, with a pure-Python reference of each.

``axon.store._fastio`` (Cython) does the work of one file (hash, copy) when it is built; the
pure-Python versions below are the oracle the test suite compares it with, and the fallback where
the extension is missing. Spreading many files over threads (largest first, the first failure
cancelling the rest, the final sync) is written once, here, and drives either implementation's
per-file work, so the fallback runs the same algorithm as the native path.
Set ``AXON_PURE_PYTHON=1`` to force the fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import xxhash

__all__ = [
    "COPY_METHODS",
    "HASH_CHUNK_BYTES",
    "Cancel",
    "CopyResult",
    "FileDigest",
    "copy_file",
    "copy_files",
    "copy_tree",
    "hash_file",
    "hash_files",
    "is_within",
    "native_available",
    "open_beneath",
    "rename_exchange",
]

COPY_METHODS = ("reflink", "copy_file_range", "sendfile", "readwrite")

HASH_CHUNK_BYTES = 1 << 20  # 1 MiB: the fastest chunk size for hashlib and xxhash here

Progress = Callable[[int], object] | None
PathArg = str | os.PathLike[str]


def _load_native() -> ModuleType | None:
    if os.environ.get("AXON_PURE_PYTHON") == "1":
        return None
    try:
        from axon.store import _fastio
    except ImportError:
        return None
    return _fastio


_native = _load_native()


def native_available() -> bool:
    """True when the compiled extension is in use."""
    return _native is not None


@dataclass(frozen=True, slots=True)
class FileDigest:
    size: int
    sha256: str
    xxh3_128: str


@dataclass(frozen=True, slots=True)
class CopyResult:
    """One copied file: *method* is how its bytes moved; digests are set when verify was asked."""

    path: str
    size: int
    method: str
    sha256: str | None = None
    xxh3_128: str | None = None


class Cancel:
    """The flag one operation's threads share: once set, each stops between two chunks.

    Native and pure-Python per-file work read the same ``cancelled`` attribute.
    """

    __slots__ = ("cancelled",)

    cancelled: bool

    def __init__(self) -> None:
        self.cancelled = False

    def set(self) -> None:
        self.cancelled = True


# Files this large (8 MiB) are worth a thread each when verifying and a second hashing thread
# (the native per-file code uses the same bound: _fastio.LARGE_FILE_BYTES, a test checks it).
_LARGE_FILE_BYTES = 8 << 20
# Durable copies fsync files this large one by one; one syncfs covers the smaller ones.
_FSYNC_EACH_MIN_BYTES = 8 << 20
_RW_CHUNK_BYTES = 1 << 20

# (size, method, sha256, xxh3_128) of one copied file; the digests are None unless verified.
_CopyRow = tuple[int, str, str | None, str | None]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


# --- pure-Python reference: one file -------------------------------------------------------


def _check_cancel(cancel: Cancel | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise KeyboardInterrupt("cancelled")


def hash_file_py(path: PathArg, progress: Progress = None, chunk_size: int = HASH_CHUNK_BYTES, *,
                 cancel: Cancel | None = None, sha256: bool = True) -> FileDigest:
    """Reference hash_file; *sha256* false leaves the sha256 empty (xxh3-128 alone)."""
    sha = hashlib.sha256() if sha256 else None
    xxh = xxhash.xxh3_128()
    total = 0
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if sha is not None:
                sha.update(view[:n])
            xxh.update(view[:n])
            total += n
            if progress is not None:
                progress(n)
            _check_cancel(cancel)
    return FileDigest(total, sha.hexdigest() if sha is not None else "", xxh.hexdigest())


def copy_file_py(src: PathArg, dst: PathArg, progress: Progress = None) -> tuple[int, str]:
    total = 0
    with open(src, "rb", buffering=0) as fin:
        st = os.fstat(fin.fileno())
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, st.st_mode & 0o7777)
        try:
            os.fchmod(fd, st.st_mode & 0o7777)
            while chunk := fin.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                total += len(chunk)
                if progress is not None:
                    progress(len(chunk))
        finally:
            os.close(fd)
    if total != st.st_size:
        raise OSError(errno.EINVAL, f"source changed size during copy ({st.st_size} -> {total} bytes)", src)
    return total, ("readwrite" if total else "empty")


def _segments_py(fd: int, size: int, sparse: bool) -> list[tuple[int, int]]:
    if not sparse:
        return [(0, size)]
    out, pos = [], 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            return [(0, size)]
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((data, min(hole, size)))
        pos = hole
    return out


def _copy_bytes_py(fin: int, fout: int, src: str, dst: str, segments: list[tuple[int, int]],
                   hashers: tuple[_Hasher, ...], progress: Progress, cancel: Cancel | None) -> None:
    for start, end in segments:
        off = start
        while off < end:
            try:
                chunk = os.pread(fin, min(_RW_CHUNK_BYTES, end - off), off)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, src) from exc
            if not chunk:
                raise OSError(errno.EINVAL, "source shrank during the copy", src)
            for h in hashers:
                h.update(chunk)
            view = memoryview(chunk)
            done = 0
            try:
                while done < len(chunk):
                    done += os.pwrite(fout, view[done:], off + done)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, dst) from exc
            off += len(chunk)
            if progress is not None:
                progress(len(chunk))
            _check_cancel(cancel)


def copy_file_ex_py(src: PathArg, dst: PathArg, *, verify: bool = False, progress: Progress = None,
                    cancel: Cancel | None = None, hash_after: bool = True) -> _CopyRow:
    """Reference copy_file_ex: a new *dst* (``O_EXCL``) by pread/pwrite, holes kept, source's mode.

    With *verify*, a dense file is hashed as its bytes pass; a sparse one is hashed from the
    destination afterwards, or (*hash_after* false) left to the caller with None digests, as
    the native copy leaves the files the kernel moved. *dst* is removed again on any failure.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fin)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", src)
        sparse = st.st_blocks * 512 < st.st_size
        # A sparse file's bytes never all pass through here (holes are skipped): hash the copy.
        hashers: tuple[_Hasher, ...] = (hashlib.sha256(), xxhash.xxh3_128()) if verify and not sparse else ()
        digests: tuple[str | None, str | None] = (None, None)
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _copy_bytes_py(fin, fout, src, dst, _segments_py(fin, st.st_size, sparse), hashers, progress, cancel)
            try:
                os.ftruncate(fout, st.st_size)
                os.fchmod(fout, st.st_mode & 0o7777)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, dst) from exc
            if hashers:
                digests = (hashers[0].hexdigest(), hashers[1].hexdigest())
            elif verify and hash_after:
                d = hash_file_py(dst, cancel=cancel)
                digests = (d.sha256, d.xxh3_128)
        except BaseException:
            os.close(fout)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(fout)
    finally:
        os.close(fin)
    return st.st_size, ("readwrite" if st.st_size else "empty"), digests[0], digests[1]


def is_within_py(root: PathArg, path: PathArg) -> bool:
    if not os.path.exists(root) or not os.path.lexists(path):
        return False
    real_root = os.path.realpath(root)
    real_path = os.path.realpath(path)
    if not os.path.exists(real_path):
        return False
    if real_root == "/":
        return True
    return real_path == real_root or real_path.startswith(real_root + os.sep)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def rename_exchange_py(a: PathArg, b: PathArg) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def syncfs_path_py(path: PathArg) -> None:
    """Reference syncfs_path: ``syncfs()`` (through libc) on the file system holding *path*."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)


def open_beneath_py(root: PathArg | int, relpath: PathArg, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Reference open_beneath: one ``openat`` per component with ``O_NOFOLLOW`` (symlinks refused)."""
    rel = os.fsdecode(os.fspath(relpath))
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or not parts or ".." in parts:
        raise OSError(errno.EXDEV, "path is not strictly below the root", rel)
    own = not isinstance(root, int)
    rootfd = root if isinstance(root, int) else os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    cur = rootfd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            fl = (flags if last else os.O_PATH | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC
            nxt = os.open(part, fl, mode, dir_fd=cur)
            if cur != rootfd:
                os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        if cur != rootfd:
            os.close(cur)
        raise
    finally:
        if own:
            os.close(rootfd)


# --- per-file work of each implementation ------------------------------------------------


class _HashOne(Protocol):
    def __call__(self, path: str, *, progress: Progress, pipeline: bool | None, cancel: Cancel,
                 sha256: bool) -> FileDigest: ...


class _CopyOne(Protocol):
    def __call__(self, src: str, dst: str, *, verify: bool, drop_cache: bool, progress: Progress, cancel: Cancel,
                 method: str, split_hash: bool, start_writeback: bool) -> _CopyRow: ...


@dataclass(frozen=True, slots=True)
class _PerFile:
    """What one implementation does to a single file; the scheduling below drives either."""

    hash_one: _HashOne
    copy_one: _CopyOne
    syncfs: Callable[[str], None]


def _lib() -> ModuleType:
    if _native is None:
        raise RuntimeError("axon.store._fastio is not built")
    return _native


def _hash_one_native(path: str, *, progress: Progress, pipeline: bool | None, cancel: Cancel,
                     sha256: bool) -> FileDigest:
    size, sha, xxh = _lib().hash_file(path, progress=progress, pipeline=pipeline, cancel=cancel, sha256=sha256)
    return FileDigest(size, sha or "", xxh)


def _copy_one_native(src: str, dst: str, *, verify: bool, drop_cache: bool, progress: Progress, cancel: Cancel,
                     method: str, split_hash: bool, start_writeback: bool) -> _CopyRow:
    # No fsync and no hash after a kernel copy here: the scheduler runs both across all files.
    row: _CopyRow = _lib().copy_file_ex(src, dst, verify=verify, drop_cache=drop_cache, progress=progress,
                                        cancel=cancel, method=method, hash_pipeline=split_hash, hash_after=False,
                                        start_writeback=start_writeback)
    return row


def _syncfs_native(path: str) -> None:
    _lib().syncfs_path(path)


def _hash_one_py(path: str, *, progress: Progress, pipeline: bool | None, cancel: Cancel,
                 sha256: bool) -> FileDigest:
    # *pipeline* (reader and sha256 on two threads within one file) is the native code's own.
    return hash_file_py(path, progress, cancel=cancel, sha256=sha256)


def _copy_one_py(src: str, dst: str, *, verify: bool, drop_cache: bool, progress: Progress, cancel: Cancel,
                 method: str, split_hash: bool, start_writeback: bool) -> _CopyRow:
    # The reference has one method (pread/pwrite) and leaves writeback and page dropping to
    # the kernel; *drop_cache* still applies where the scheduler fsyncs.
    return copy_file_ex_py(src, dst, verify=verify, progress=progress, cancel=cancel, hash_after=False)


_NATIVE = _PerFile(_hash_one_native, _copy_one_native, _syncfs_native)
_PURE = _PerFile(_hash_one_py, _copy_one_py, syncfs_path_py)


def _per_file() -> _PerFile:
    return _PURE if _native is None else _NATIVE


# --- scheduling: many files over threads, the same for both implementations ---------------


def _serialized(progress: Progress, lock: threading.Lock) -> Progress:
    """The caller's progress callback, called from one worker thread at a time."""
    if progress is None:
        return None
    report = progress

    def serialized(n: int) -> None:
        with lock:
            report(n)

    return serialized


def _wait_all(futures: Iterable[Future[Any]], cancel: Cancel) -> None:
    """Wait for every future; on the first failure or Ctrl-C, stop the others and re-raise.

    Worker threads never see signals, so this (calling) thread waits in 0.2 s slices, where
    Ctrl-C arrives; the workers see *cancel* within a chunk.
    """
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    raise exc
    except BaseException:
        cancel.set()
        wait(pending)
        raise


def _largest_first(paths: list[str]) -> tuple[list[int], list[int]]:
    """Indexes of *paths*, largest file first (a missing one counts as empty), and the sizes."""
    sizes = []
    for p in paths:
        try:
            sizes.append(os.stat(p).st_size)
        except OSError:
            sizes.append(0)
    return sorted(range(len(paths)), key=lambda i: -sizes[i]), sizes


def _hash_files(work: _PerFile, paths: list[str], *, workers: int = 0, progress: Progress = None,
                pipeline: bool | None = None, sha256: bool = True) -> list[FileDigest]:
    """Hash *paths* over *workers* threads (0: one per core), largest first; results follow *paths*.

    *pipeline* None lets each file decide (by size) whether its reader and its sha256 take two
    threads, which pays only while fewer files are hashed at once than there are cores.
    """
    if not paths:
        return []
    ncpu = os.cpu_count() or 1
    nworkers = min(workers if workers > 0 else ncpu, len(paths))
    cancel = Cancel()
    report = _serialized(progress, threading.Lock())
    if pipeline is None and nworkers >= ncpu:
        pipeline = False
    if nworkers == 1:
        return [work.hash_one(p, progress=report, pipeline=pipeline, cancel=cancel, sha256=sha256) for p in paths]
    order, _ = _largest_first(paths)
    results: dict[int, FileDigest] = {}
    with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="axon-hash") as pool:
        futures = {pool.submit(work.hash_one, paths[i], progress=report, pipeline=pipeline, cancel=cancel,
                               sha256=sha256): i for i in order}
        _wait_all(futures, cancel)
        for fut, i in futures.items():
            results[i] = fut.result()
    return [results[i] for i in range(len(paths))]


def _fsync_path(path: str, drop_cache: bool) -> None:
    """fsync a written file by name, then (*drop_cache*) drop its pages; errors name the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            if drop_cache:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from exc


def _copy_files(work: _PerFile, pairs: list[tuple[str, str]], *, workers: int, verify: bool, durable: bool,
                drop_cache: bool, progress: Progress, method: str, final_sync: bool = True) -> list[CopyResult]:
    """Copy ``[(src, dst)]`` regular files over *workers* threads, largest first; results follow *pairs*.

    Each file is copied and, with *verify*, hashed as it goes (the native copy also hashes from
    the destination right behind each kernel chunk); files whose bytes no one saw (reflinked,
    sparse) are hashed afterwards, across all cores. With *durable*, each file's writeback
    starts while it is copied, then the large files are fsynced and one ``syncfs`` covers the
    rest (skipped when *final_sync* is false: the caller runs it). On any failure (or Ctrl-C)
    the other workers stop between chunks, every file written is removed, and the first error
    is raised.
    """
    if not pairs:
        return []
    cancel = Cancel()
    report = _serialized(progress, threading.Lock())
    order, sizes = _largest_first([s for s, _ in pairs])
    ncpu = os.cpu_count() or 1
    large = sum(1 for n in sizes if n >= _LARGE_FILE_BYTES)
    nworkers = workers if workers > 0 else ncpu
    if verify and workers <= 0:
        # sha256 is sequential within a file: with fewer threads than large files, the last
        # one would be copied and hashed alone on one core while the others sit idle.
        nworkers = max(nworkers, large)
    nworkers = min(nworkers, len(pairs))
    # Verifying, a large file's sha256 may run on a core of its own while fewer large files are
    # copied at once than there are cores.
    split_hash = verify and min(nworkers, large) < ncpu
    rows: dict[int, _CopyRow] = {}
    written: set[int] = set()

    def copy_one(i: int) -> _CopyRow:
        src, dst = pairs[i]
        row = work.copy_one(src, dst, verify=verify, drop_cache=drop_cache, progress=report, cancel=cancel,
                            method=method, split_hash=split_hash, start_writeback=durable)
        written.add(i)
        return row

    def sync_one(i: int) -> None:
        if rows[i][0] >= _FSYNC_EACH_MIN_BYTES:  # smaller ones: the final syncfs
            _fsync_path(pairs[i][1], drop_cache)

    try:
        with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="axon-copy") as pool:
            copies = {pool.submit(copy_one, i): i for i in order}
            _wait_all(copies, cancel)
            for fut, i in copies.items():
                rows[i] = fut.result()
            if verify:
                todo = [i for i in order if rows[i][2] is None]
                # One thread per large file (sha256 is sequential within a file): with fewer
                # threads than large files, the last one would be hashed alone on one core.
                big = sum(1 for i in todo if rows[i][0] >= _LARGE_FILE_BYTES)
                digests = _hash_files(work, [pairs[i][1] for i in todo], workers=max(workers or ncpu, big))
                for i, d in zip(todo, digests, strict=True):
                    rows[i] = (rows[i][0], rows[i][1], d.sha256, d.xxh3_128)
            if durable:
                syncs = {pool.submit(sync_one, i): i for i in order}
                _wait_all(syncs, cancel)
        if durable and final_sync:
            work.syncfs(os.path.dirname(pairs[0][1]) or ".")
    except BaseException:
        for i in written:
            with contextlib.suppress(OSError):
                os.unlink(pairs[i][1])
        raise
    return [CopyResult(dst, *rows[i]) for i, (_, dst) in enumerate(pairs)]


def _scan_tree(src: str) -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
    """(dirs with modes, files, symlinks with targets) under *src*, relative; anything else is an error."""
    dirs: list[tuple[str, int]] = []
    files: list[str] = []
    links: list[tuple[str, str]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(src, rel) if rel else src) as it:
            for entry in it:
                r = os.path.join(rel, entry.name) if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links.append((r, os.readlink(entry.path)))
                elif stat.S_ISDIR(st.st_mode):
                    dirs.append((r, st.st_mode & 0o7777))
                    stack.append(r)
                elif stat.S_ISREG(st.st_mode):
                    files.append(r)
                else:
                    raise OSError(errno.EINVAL, "not a regular file, directory or symlink", entry.path)
    return sorted(dirs), files, sorted(links)


def _remove_tree(path: str) -> None:
    for dirpath, _dirnames, _filenames in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _copy_tree(work: _PerFile, src: PathArg, dst: PathArg, *, workers: int, verify: bool, durable: bool,
               drop_cache: bool | None, progress: Progress, method: str) -> list[CopyResult]:
    """Copy a directory tree; results sorted by relative path.

    The files go through :func:`_copy_files`; symlinks are recreated as symlinks, directories
    get their modes last; FIFOs, sockets and devices are refused before anything is created.
    With *durable*, one ``syncfs`` covers the small files, every directory, the symlinks and
    *dst*'s own entry: cheaper than an fsync each when there are thousands. On any failure
    everything created under *dst* is removed.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    dirs, files, links = _scan_tree(src)
    created_root = not os.path.exists(dst)
    src_mode = os.stat(src).st_mode & 0o7777
    os.makedirs(dst, mode=0o700, exist_ok=True)
    try:
        for rel, _mode in dirs:
            os.mkdir(os.path.join(dst, rel), 0o700)
        pairs = [(os.path.join(src, rel), os.path.join(dst, rel)) for rel in files]
        copied = _copy_files(work, pairs, workers=workers, verify=verify, durable=durable,
                             drop_cache=durable if drop_cache is None else drop_cache, progress=progress,
                             method=method, final_sync=False)
        results = [CopyResult(rel, c.size, c.method, c.sha256, c.xxh3_128)
                   for rel, c in zip(files, copied, strict=True)]
        for rel, target in links:
            os.symlink(target, os.path.join(dst, rel))
        for rel, mode in reversed(dirs):
            os.chmod(os.path.join(dst, rel), mode)
        if created_root:
            os.chmod(dst, src_mode)
        if durable:
            work.syncfs(dst)
    except BaseException:
        if created_root:
            _remove_tree(dst)
        raise
    return sorted(results, key=lambda r: r.path)


# --- pure-Python reference: many files (the scheduling above, driving the reference per file)


def hash_files_py(paths: list[PathArg], workers: int = 0, progress: Progress = None, *,
                  sha256: bool = True) -> list[FileDigest]:
    return _hash_files(_PURE, [os.fspath(p) for p in paths], workers=workers, progress=progress, sha256=sha256)


def copy_files_py(pairs: list[tuple[PathArg, PathArg]], *, workers: int = 0, verify: bool = False,
                  durable: bool = False, drop_cache: bool | None = None, progress: Progress = None) -> list[CopyResult]:
    """Reference copy_files: the same scheduling, sync and cleanup, one plain read/write per file."""
    return _copy_files(_PURE, [(os.fspath(s), os.fspath(d)) for s, d in pairs], workers=workers, verify=verify,
                       durable=durable, drop_cache=durable if drop_cache is None else drop_cache, progress=progress,
                       method="readwrite")


def copy_tree_py(src: PathArg, dst: PathArg, *, workers: int = 0, verify: bool = False, durable: bool = False,
                 drop_cache: bool | None = None, progress: Progress = None) -> list[CopyResult]:
    """Reference copy_tree: same tree rules and scheduling as the native one, one plain read/write per file."""
    return _copy_tree(_PURE, src, dst, workers=workers, verify=verify, durable=durable, drop_cache=drop_cache,
                      progress=progress, method="readwrite")


# --- public API --------------------------------------------------------------------------


def hash_file(path: PathArg, *, progress: Progress = None, chunk_size: int = HASH_CHUNK_BYTES) -> FileDigest:
    """Size, sha256 and xxh3-128 of *path* in one streaming read pass.

    Raises:
        OSError: with errno and the file name when the file cannot be read.
    """
    if chunk_size < 4096:
        raise ValueError(f"chunk_size must be at least 4096 bytes, got {chunk_size}")
    if _native is None:
        return hash_file_py(path, progress, chunk_size)
    size, sha, xxh = _native.hash_file(os.fspath(path), progress=progress, chunk_size=chunk_size)
    return FileDigest(size, sha, xxh)


def hash_files(paths: list[PathArg], *, workers: int = 0, progress: Progress = None,
               sha256: bool = True) -> list[FileDigest]:
    """sha256 + xxh3-128 of each file, one read pass each, spread over *workers* threads.

    Largest first; the first failure stops the other threads and is raised. Reads and hashing
    release the GIL, so threads run on separate cores; a single large file is hashed by two
    threads (reader+xxh3, sha256) so both digests cost what sha256 alone does. *sha256* false
    computes xxh3-128 alone (the sha256 fields are then empty).
    """
    return _hash_files(_per_file(), [os.fspath(p) for p in paths], workers=workers, progress=progress,
                       sha256=sha256)


def copy_tree(src: PathArg, dst: PathArg, *, workers: int = 0, verify: bool = False, durable: bool = False,
              drop_cache: bool | None = None, progress: Progress = None, method: str = "reflink") -> list[CopyResult]:
    """Copy a directory tree as fast as the file system allows.

    Per file: FICLONE (reflink) -> copy_file_range -> sendfile -> pread/pwrite, stepping down on
    EXDEV/EOPNOTSUPP/ENOSYS/EINVAL; holes kept; modes and sizes exact. Files run in parallel
    (largest first). *verify* returns each file's sha256 and xxh3-128 (hashed inline when the
    bytes pass through user space, else from the destination right behind each kernel chunk, or
    by one read of a reflinked copy). *durable* fsyncs every file and directory; *drop_cache*
    (default: durable) keeps at most 64 MiB per file unwritten, drops the copy's pages once on
    disk, and the source's if they were not cached before, so a big publish does not evict a
    server's hot pages.

    Raises:
        OSError: with errno and file name; everything created under *dst* is removed first.
    """
    if method not in COPY_METHODS:
        raise ValueError(f"method must be one of {COPY_METHODS}, not {method!r}")
    return _copy_tree(_per_file(), src, dst, workers=workers, verify=verify, durable=durable, drop_cache=drop_cache,
                      progress=progress, method=method)


def copy_files(pairs: list[tuple[PathArg, PathArg]], *, workers: int = 0, verify: bool = False,
               durable: bool = False, drop_cache: bool | None = None, progress: Progress = None) -> list[CopyResult]:
    """Copy regular files (new destinations) in parallel, largest first; results follow *pairs*.

    Same per-file method chain, verification and durability as :func:`copy_tree`; on failure
    the files written so far are removed and the first error is raised.
    """
    return _copy_files(_per_file(), [(os.fspath(s), os.fspath(d)) for s, d in pairs], workers=workers, verify=verify,
                       durable=durable, drop_cache=durable if drop_cache is None else drop_cache, progress=progress,
                       method="reflink")


def open_beneath(root: PathArg | int, relpath: PathArg, flags: int = os.O_RDONLY, mode: int = 0o644, *,
                 follow_symlinks: bool = True) -> int:
    """Open *relpath* below *root* so that no symlink or ``..`` can lead outside it; returns an fd.

    Uses ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` (symlinks that stay inside are
    followed; a path that resolves outside fails with EXDEV even if swapped in after a check);
    without openat2, every component is opened with ``O_NOFOLLOW`` (symlinks fail with ELOOP).
    *follow_symlinks* false refuses every symlink on the way (ELOOP), with or without openat2:
    what a root process reading a tree someone else controls needs.
    """
    if _native is None:
        return open_beneath_py(root, relpath, flags, mode)
    return _native.open_beneath(root if isinstance(root, int) else os.fspath(root), os.fspath(relpath),  # type: ignore[no-any-return]
                                flags, mode, True, follow_symlinks)


def copy_file(src: PathArg, dst: PathArg, *, progress: Progress = None) -> tuple[int, str]:
    """Copy *src* to *dst* (created or truncated, same mode); returns (bytes, method used)."""
    if _native is None:
        return copy_file_py(src, dst, progress)
    return _native.copy_file(os.fspath(src), os.fspath(dst), progress=progress)  # type: ignore[no-any-return]


def is_within(root: PathArg, path: PathArg) -> bool:
    """True when *path* exists and its real path is *root*'s real path or lies below it.

    Compares on path-component boundaries, so ``/srv/models-evil`` is not within ``/srv/models``.
    """
    if _native is None:
        return is_within_py(root, path)
    return _native.is_within(os.fspath(root), os.fspath(path))  # type: ignore[no-any-return]


def rename_exchange(a: PathArg, b: PathArg) -> None:
    """Swap two existing paths atomically (``renameat2(RENAME_EXCHANGE)``)."""
    if _native is None:
        rename_exchange_py(a, b)
    else:
        _native.rename_exchange(os.fspath(a), os.fspath(b))
