"""Typed entry points to axon's hot paths, with a pure-Python reference of each.

``axon.store._fastio`` (Cython) is used when it is built; the pure-Python versions below are the
oracle the test suite compares it with, and the fallback where the extension is missing.
Set ``AXON_PURE_PYTHON=1`` to force the fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

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
    """Pure-Python twin of the native cancel flag shared by one operation's threads."""

    def __init__(self) -> None:
        self.cancelled = False

    def set(self) -> None:
        self.cancelled = True


# --- pure-Python reference -------------------------------------------------------------


def hash_file_py(path: PathArg, progress: Progress = None, chunk_size: int = HASH_CHUNK_BYTES) -> FileDigest:
    sha = hashlib.sha256()
    xxh = xxhash.xxh3_128()
    total = 0
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sha.update(view[:n])
            xxh.update(view[:n])
            total += n
            if progress is not None:
                progress(n)
    return FileDigest(total, sha.hexdigest(), xxh.hexdigest())


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


def hash_files_py(paths: list[PathArg], workers: int = 0, progress: Progress = None) -> list[FileDigest]:
    return [hash_file_py(p, progress) for p in paths]


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


def _copy_one_py(src: str, dst: str, verify: bool, durable: bool, progress: Progress) -> CopyResult:
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fin)
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            sparse = st.st_blocks * 512 < st.st_size
            for start, end in _segments_py(fin, st.st_size, sparse):
                off = start
                while off < end:
                    chunk = os.pread(fin, min(1 << 20, end - off), off)
                    if not chunk:
                        raise OSError(errno.EINVAL, "source shrank during the copy", src)
                    view = memoryview(chunk)
                    done = 0
                    while done < len(chunk):
                        done += os.pwrite(fout, view[done:], off + done)
                    off += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            os.ftruncate(fout, st.st_size)
            if durable:
                os.fsync(fout)
            os.fchmod(fout, st.st_mode & 0o7777)
        except BaseException as exc:
            os.close(fout)
            os.unlink(dst)
            if isinstance(exc, OSError) and exc.filename is None:
                raise OSError(exc.errno, exc.strerror, dst) from exc
            raise
        os.close(fout)
    finally:
        os.close(fin)
    rel_digest = hash_file_py(dst) if verify else None
    return CopyResult(dst, st.st_size, "readwrite", rel_digest.sha256 if rel_digest else None,
                      rel_digest.xxh3_128 if rel_digest else None)


def copy_tree_py(src: PathArg, dst: PathArg, *, workers: int = 0, verify: bool = False, durable: bool = False,
                 progress: Progress = None) -> list[CopyResult]:
    """Reference copy_tree: same tree rules as the native one, one plain read/write per file."""
    import stat as stat_mod

    src, dst = os.fspath(src), os.fspath(dst)
    created = not os.path.exists(dst)
    os.makedirs(dst, mode=0o700, exist_ok=True)
    results: list[CopyResult] = []
    dir_modes: list[tuple[str, int]] = []
    try:
        for dirpath, dirnames, filenames in os.walk(src):
            rel_dir = os.path.relpath(dirpath, src)
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                target = os.path.join(dst, rel)
                st = os.lstat(full)
                if stat_mod.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(full), target)
                    if name in dirnames:
                        dirnames.remove(name)
                elif stat_mod.S_ISDIR(st.st_mode):
                    os.mkdir(target, 0o700)
                    dir_modes.append((target, st.st_mode & 0o7777))
                elif stat_mod.S_ISREG(st.st_mode):
                    r = _copy_one_py(full, target, verify, durable, progress)
                    results.append(CopyResult(rel, r.size, r.method, r.sha256, r.xxh3_128))
                else:
                    raise OSError(errno.EINVAL, "not a regular file, directory or symlink", full)
        for target, mode in reversed(dir_modes):
            os.chmod(target, mode)
            if durable:
                _fsync_dir_py(target)
        if durable:
            _fsync_dir_py(dst)
        if created:
            os.chmod(dst, os.stat(src).st_mode & 0o7777)
    except BaseException:
        if created:
            import shutil

            for dirpath, _d, _f in os.walk(dst):
                os.chmod(dirpath, 0o700)
            shutil.rmtree(dst, ignore_errors=True)
        raise
    return sorted(results, key=lambda r: r.path)


def _fsync_dir_py(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_beneath_py(root: PathArg | int, relpath: PathArg, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Reference open_beneath: one ``openat`` per component with ``O_NOFOLLOW`` (symlinks refused)."""
    rel = os.fsdecode(os.fspath(relpath))
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or not parts or ".." in parts:
        raise OSError(errno.EXDEV, "path is not strictly below the root", rel)
    own = not isinstance(root, int)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if own else root  # type: ignore[arg-type]
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
    size, sha, xxh = _native.hash_file(os.fspath(path), progress, chunk_size)
    return FileDigest(size, sha, xxh)


def hash_files(paths: list[PathArg], *, workers: int = 0, progress: Progress = None,
               sha256: bool = True) -> list[FileDigest]:
    """sha256 + xxh3-128 of each file, one read pass each, spread over *workers* threads.

    Reads and hashing release the GIL, so threads run on separate cores; a single large file
    is hashed by two threads (reader+xxh3, sha256) so both digests cost what sha256 alone does.
    """
    paths = [os.fspath(p) for p in paths]
    if _native is None:
        return hash_files_py(paths, workers, progress)
    return [FileDigest(size, sha or "", xxh) for size, sha, xxh in _native.hash_files(paths, workers, progress, None,
                                                                                      sha256)]


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
    if _native is None:
        return copy_tree_py(src, dst, workers=workers, verify=verify, durable=durable, progress=progress)
    rows = _native.copy_tree(os.fspath(src), os.fspath(dst), workers, verify, durable, drop_cache, progress, method)
    return [CopyResult(*row) for row in rows]


def copy_files(pairs: list[tuple[PathArg, PathArg]], *, workers: int = 0, verify: bool = False,
               durable: bool = False, drop_cache: bool | None = None, progress: Progress = None) -> list[CopyResult]:
    """Copy regular files (new destinations) in parallel, largest first; results follow *pairs*.

    Same per-file method chain, verification and durability as :func:`copy_tree`; on failure
    the files written so far are removed.
    """
    str_pairs = [(os.fspath(s), os.fspath(d)) for s, d in pairs]
    drop = durable if drop_cache is None else drop_cache
    if _native is None:
        out = []
        try:
            for s, d in str_pairs:
                out.append(_copy_one_py(s, d, verify, durable, progress))
        except BaseException:
            for r in out:
                with contextlib.suppress(OSError):
                    os.unlink(r.path)
            raise
        return out
    rows = _native.copy_files(str_pairs, workers, verify, durable, drop, progress, "reflink")
    return [CopyResult(d, *row) for (_, d), row in zip(str_pairs, rows, strict=True)]


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
    return _native.copy_file(os.fspath(src), os.fspath(dst), progress)  # type: ignore[no-any-return]


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
