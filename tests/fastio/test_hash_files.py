from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from axon.store import fastio

native_only = pytest.mark.skipif(not fastio.native_available(), reason="axon.store._fastio is not built")


def _files(tmp_path: Path) -> dict[Path, bytes]:
    sizes = [0, 1, fastio.HASH_CHUNK_BYTES - 1, fastio.HASH_CHUNK_BYTES + 1, 9 << 20, 17 << 20]
    out = {}
    for i, size in enumerate(sizes):
        p = tmp_path / f"f{i}.bin"
        data = os.urandom(size)
        p.write_bytes(data)
        out[p] = data
    return out


@pytest.mark.parametrize("workers", [0, 1, 2, 5])
def test_hash_files_matches_hashlib(tmp_path: Path, workers: int) -> None:
    files = _files(tmp_path)
    seen: list[int] = []
    digests = fastio.hash_files(list(files), workers=workers, progress=seen.append)
    assert [(d.size, d.sha256, d.xxh3_128) for d in digests] == [
        (len(b), hashlib.sha256(b).hexdigest(), xxhash.xxh3_128(b).hexdigest()) for b in files.values()]
    assert sum(seen) == sum(len(b) for b in files.values())
    assert fastio.hash_files_py(list(files)) == digests


@native_only
@pytest.mark.parametrize("pipeline", [True, False])
def test_pipelined_and_serial_agree(tmp_path: Path, pipeline: bool) -> None:
    data = os.urandom(33 << 20)
    (tmp_path / "x").write_bytes(data)
    size, sha, xxh = fastio._native.hash_file(tmp_path / "x", pipeline=pipeline)  # type: ignore[union-attr]
    assert (size, sha, xxh) == (len(data), hashlib.sha256(data).hexdigest(), xxhash.xxh3_128(data).hexdigest())


def test_hash_files_raises_for_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(FileNotFoundError) as info:
        fastio.hash_files([tmp_path / "a", tmp_path / "missing"], workers=2)
    assert info.value.filename == str(tmp_path / "missing")


def test_hash_file_of_a_fifo_with_a_writer(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    payload = os.urandom(3 << 20)

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=writer)
    t.start()
    d = fastio.hash_file(fifo)
    t.join()
    assert (d.size, d.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
