"""Typed entry points to axon's hot paths, with a pure-Python reference of each.

``axon._fastio`` (Cython) is used when it is built; the pure-Python versions below are the
oracle the test suite compares it with, and the fallback where the extension is missing.
Set ``AXON_PURE_PYTHON=1`` to force the fallback.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import xxhash

__all__ = [
    "HASH_CHUNK_BYTES",
    "FileDigest",
    "copy_file",
    "hash_file",
    "is_within",
    "native_available",
    "rename_exchange",
]

HASH_CHUNK_BYTES = 1 << 20  # 1 MiB: the fastest chunk size for hashlib and xxhash here

Progress = Callable[[int], object] | None
PathArg = str | os.PathLike[str]


def _load_native() -> ModuleType | None:
    if os.environ.get("AXON_PURE_PYTHON") == "1":
        return None
    try:
        from axon import _fastio
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
    return total, "readwrite"


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
