from collections.abc import Callable
from os import PathLike

_Path = str | bytes | PathLike[str]
_Progress = Callable[[int], object] | None

METHODS: tuple[str, ...]

class Cancel:
    cancelled: bool
    def set(self) -> None: ...

def hash_file(
    path: _Path, progress: _Progress = ..., chunk_size: int = ..., pipeline: bool | None = ...,
    cancel: Cancel | None = ..., sha256: bool = ...,
) -> tuple[int, str | None, str]: ...
def hash_files(
    paths: list[str], workers: int = ..., progress: _Progress = ..., pipeline: bool | None = ..., sha256: bool = ...
) -> list[tuple[int, str | None, str]]: ...
def copy_file_ex(
    src: _Path, dst: _Path, verify: bool = ..., durable: bool = ..., drop_cache: bool = ...,
    progress: _Progress = ..., cancel: Cancel | None = ..., exclusive: bool = ..., method: str = ...,
    defer_small_sync: bool = ..., hash_pipeline: object = ..., hash_after: bool = ..., start_writeback: bool = ...,
) -> tuple[int, str, str | None, str | None]: ...
def copy_file(src: _Path, dst: _Path, progress: _Progress = ...) -> tuple[int, str]: ...
def copy_files(
    pairs: list[tuple[str, str]], workers: int = ..., verify: bool = ..., durable: bool = ..., drop_cache: bool = ...,
    progress: _Progress = ..., method: str = ..., final_sync: bool = ...,
) -> list[tuple[int, str, str | None, str | None]]: ...
def syncfs_path(path: _Path) -> None: ...
def copy_tree(
    src: _Path, dst: _Path, workers: int = ..., verify: bool = ..., durable: bool = ...,
    drop_cache: bool | None = ..., progress: _Progress = ..., method: str = ...,
) -> list[tuple[str, int, str, str | None, str | None]]: ...
def is_within(root: _Path, path: _Path) -> bool: ...
def open_beneath(
    root: _Path | int, relpath: _Path, flags: int = ..., mode: int = ..., use_openat2: bool = ...,
    follow_symlinks: bool = ...,
) -> int: ...
def rename_exchange(a: _Path, b: _Path) -> None: ...
