"""Real file systems for tests: a tmpfs of a given size, a loop-mounted XFS with reflink.

Both need root (CI runs as root); otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (CI runs as root)")


@contextmanager
def tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    _need_root("mounting a tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextmanager
def xfs_reflink(where: Path, size: str = "600M") -> Iterator[Path]:
    _need_root("loop-mounting XFS")
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (apt-get install xfsprogs; .ci/run does)")
    image = where.with_suffix(".img")
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    mk = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], capture_output=True, text=True,
                        check=False)
    if mk.returncode != 0:
        pytest.skip(f"mkfs.xfs failed: {mk.stderr.strip()}")
    where.mkdir(parents=True, exist_ok=True)
    mnt = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True, text=True, check=False)
    if mnt.returncode != 0:
        image.unlink()
        pytest.skip(f"cannot loop-mount XFS here: {mnt.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        image.unlink(missing_ok=True)


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
_EXTENT = struct.Struct("=QQQ2QI3I")  # struct fiemap_extent: logical, physical, length, reserved, flags, reserved


def physical_extents(path: Path, max_extents: int = 64) -> list[tuple[int, int]]:
    """(physical offset, length) of every extent of *path* (FIEMAP): two files sharing blocks
    (reflinks) list the same ones."""
    header = struct.pack("=QQIIII", 0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, max_extents, 0)
    buf = bytearray(header + bytes(_EXTENT.size * max_extents))
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
    mapped = struct.unpack_from("=I", buf, 20)[0]
    extents = [_EXTENT.unpack_from(buf, 32 + i * _EXTENT.size) for i in range(mapped)]
    return [(e[1], e[2]) for e in extents]
