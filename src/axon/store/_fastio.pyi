from collections.abc import Callable
from os import PathLike
from typing import Protocol

_Path = str | bytes | PathLike[str]
_Progress = Callable[[int], object] | None

class _Cancel(Protocol):
    """What the native code reads between chunks (``axon.store.fastio.Cancel``)."""

    cancelled: bool

METHODS: tuple[str, ...]
LARGE_FILE_BYTES: int

def hash_file(
    path: _Path, *, progress: _Progress = ..., chunk_size: int = ..., pipeline: bool | None = ...,
    cancel: _Cancel | None = ..., sha256: bool = ...,
) -> tuple[int, str | None, str]: ...
def copy_file_ex(
    src: _Path, dst: _Path, *, verify: bool = ..., durable: bool = ..., drop_cache: bool = ...,
    progress: _Progress = ..., cancel: _Cancel | None = ..., exclusive: bool = ..., method: str = ...,
    hash_pipeline: bool | Callable[[], bool | None] | None = ..., hash_after: bool = ...,
    start_writeback: bool = ...,
) -> tuple[int, str, str | None, str | None]: ...
def copy_file(src: _Path, dst: _Path, *, progress: _Progress = ...) -> tuple[int, str]: ...
def syncfs_path(path: _Path) -> None: ...
def is_within(root: _Path, path: _Path) -> bool: ...
def open_beneath(
    root: _Path | int, relpath: _Path, flags: int = ..., mode: int = ..., use_openat2: bool = ...,
    follow_symlinks: bool = ...,
) -> int: ...
def rename_exchange(a: _Path, b: _Path) -> None: ...
