"""One ``/metrics`` for all the workers of ``mlos-core serve --workers N``.

Each worker answers the requests the kernel hands it and counts only those; a scrape lands on one
worker. As in Prometheus' multiprocess mode, the workers share a directory: the parent process
makes it (``mkdtemp``: ``0700``, the server user's, in ``$TMPDIR``) for this run only and names it
to the workers in ``MLOS_CORE_METRICS_DIR``; it logs where it is.

* Every worker writes its counters there, ``<pid>-<random>.json``, once a second while they change
  and once more when it stops (a temporary file renamed over the old one: never half-written).
* The worker a scrape reaches answers its own live counters plus every other worker's last file:
  counters and histograms summed (a worker that died still counts, so totals never go back),
  gauges from the workers still running only.
* The parent removes the directory when the server stops; a new run starts from zero, which
  Prometheus reads as a counter reset.

No lock and no shared memory: a file is at most a second behind its worker. Every file is read
beneath the directory's descriptor, not followed if it is a symlink, bounded, and checked before it
counts (one that does not check out is left out of the scrape, never a 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from axon.store.layout import pid_alive
from mlos_core.telemetry import HISTOGRAMS, Metrics

__all__ = ["ENV", "PUBLISH_EVERY_S", "SharedMetrics", "metrics_directory", "valid_snapshot"]

ENV = "MLOS_CORE_METRICS_DIR"
PUBLISH_EVERY_S = 1.0
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 1024  # workers of one run, restarted ones included
log = logging.getLogger("mlos_core.worker_metrics")


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """The parent's side: a fresh private directory for this run's workers, named in ``ENV``
    (they inherit it), removed when the server stops."""
    path = Path(tempfile.mkdtemp(prefix="mlos-core-metrics-"))
    os.environ[ENV] = str(path)
    log.info("workers share their metrics in %s", path)
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


class SharedMetrics:
    """A worker's side: publish its own metrics, render everyone's."""

    def __init__(self, metrics: Metrics, directory: Path) -> None:
        self.metrics = metrics
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}.json"  # a reused pid never takes a dead worker's file
        self._last = ""

    async def render(self) -> str:
        """Everyone's metrics: the other workers' files read in a thread, then rendered here, on
        the event loop that updates this worker's counters."""
        others, live = [], []
        for pid, snap in await asyncio.to_thread(self._others):
            others.append(snap)
            if pid_alive(pid):
                live.append(snap)
        return self.metrics.render(others, live=live)

    def _others(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            names = sorted(os.listdir(self.fd))[:MAX_FILES]
        except OSError:
            return []
        out = []
        for name in names:
            pid, dash, rest = name.partition("-")
            if not (dash and pid.isdigit() and rest.endswith(".json")) or name == self.name:
                continue
            snap = _read(self.fd, name)
            if snap is not None and valid_snapshot(snap):
                out.append((int(pid), snap))
        return out

    def _write(self, data: str) -> None:
        if data == self._last:
            return
        tmp = f".{self.name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.rename(tmp, self.name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        self._last = data

    async def run(self) -> None:
        """Publish every PUBLISH_EVERY_S until cancelled, then once more. The snapshot is taken
        here, on the event loop that updates the counters; only the file write is in a thread."""
        try:
            while True:
                data = json.dumps(self.metrics.snapshot(), separators=(",", ":"))
                await asyncio.to_thread(self._write_logged, data)
                await asyncio.sleep(PUBLISH_EVERY_S)
        finally:
            self._write_logged(json.dumps(self.metrics.snapshot(), separators=(",", ":")))

    def _write_logged(self, data: str) -> None:
        try:
            self._write(data)
        except OSError as exc:
            log.warning("could not share this worker's metrics: %s", exc)


def _read(dirfd: int, name: str) -> dict[str, Any] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ELOOP):
            log.warning("cannot read worker metrics %s: %s", name, exc.strerror)
        return None  # gone meanwhile (the next scrape reads the new one), or a symlink: not a worker's
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            snap = json.loads(f.read(MAX_FILE_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return snap if isinstance(snap, dict) else None


def valid_snapshot(snap: dict[str, Any]) -> bool:
    """Whether *snap* has the shape :meth:`Metrics.snapshot` writes: the known histograms with
    their own buckets, finite non-negative numbers, text labels."""
    try:
        for key in ("requests", "failures"):
            for a, b, v in snap.get(key, ()):
                if not (isinstance(a, str) and isinstance(b, str) and _count(v)):
                    return False
        for name, model, buckets, counts, total, n in snap.get("hist", ()):
            if name not in HISTOGRAMS or not isinstance(model, str) or not _count(n) or not _number(total):
                return False
            if not (isinstance(buckets, list) and all(_number(b) for b in buckets)
                    and isinstance(counts, list) and len(counts) == len(buckets) + 1 and all(map(_count, counts))):
                return False
        gauges = snap.get("gauges", {})
        return isinstance(gauges, dict) and all(
            isinstance(name, str) and isinstance(values, dict)
            and all(isinstance(label, str) and _number(v) for label, v in values.items())
            for name, values in gauges.items())
    except (TypeError, ValueError):  # not lists of the right lengths
        return False


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
