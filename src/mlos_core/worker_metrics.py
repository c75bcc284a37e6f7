"""One ``/metrics`` for all the workers of ``mlos-core serve --workers N``.

Each worker answers the requests the kernel hands it and counts only those; a scrape lands on one
worker. As in Prometheus' multiprocess mode, the workers share a directory that the parent
process creates, private to the server's user, for this run only (``MLOS_CORE_METRICS_DIR``):

* every worker writes its counters there, ``<pid>.json``, once a second while they change and
  once more when it stops (a temporary file renamed over the old one: never half-written);
* the worker a scrape reaches answers its own live counters plus every other worker's last file:
  counters and histograms summed (a worker that died still counts, so totals never go back),
  gauges from the workers still running only;
* the parent removes the directory when the server stops; a new run starts from zero, which
  Prometheus reads as a counter reset. An operator may name the directory (``ENV``, set before
  the start, like ``PROMETHEUS_MULTIPROC_DIR``): it must be the server user's, writable by no one
  else, and it is emptied of an earlier run's files at the start.

No lock and no shared memory: a file is at most a second behind its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from axon.store.layout import pid_alive
from mlos_core.telemetry import Metrics

__all__ = ["ENV", "PUBLISH_EVERY_S", "SharedMetrics", "check_metrics_directory", "metrics_directory"]

ENV = "MLOS_CORE_METRICS_DIR"
PUBLISH_EVERY_S = 1.0
_MAX_FILE_BYTES = 8 << 20
log = logging.getLogger("mlos_core.worker_metrics")


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """The parent's side: the directory this run's workers share, named in ``ENV`` (they inherit
    it). A fresh 0700 temporary one, removed when the server stops; or the operator's, given in
    ``ENV`` beforehand (as PROMETHEUS_MULTIPROC_DIR is), emptied of an earlier run's files first.

    Raises ValueError for a given directory that someone else could write into."""
    given = check_metrics_directory()
    if given is not None:
        path = given
        for name in os.listdir(path):
            if name.endswith(".json") or name.endswith(".json.tmp"):
                (path / name).unlink(missing_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="mlos-core-metrics-"))
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def check_metrics_directory() -> Path | None:
    """The operator's directory from ``ENV``, if one is given; ValueError if someone else could
    write into it."""
    given = os.environ.get(ENV)
    if not given:
        return None
    path = Path(given)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise ValueError(f"{ENV}={str(path)!r}: {exc.strerror}; create it (mkdir -m 700) or unset {ENV}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ValueError(f"{ENV}={str(path)!r} must be a directory of the server's user that no one else can "
                         f"write (chmod go-w); or unset {ENV}")
    return path


class SharedMetrics:
    """A worker's side: publish its own metrics, render everyone's."""

    def __init__(self, metrics: Metrics, directory: Path) -> None:
        self.metrics = metrics
        self.directory = directory
        self.pid = os.getpid()
        self._last = ""

    def _write(self, data: str) -> None:
        if data == self._last:
            return
        tmp = self.directory / f".{self.pid}.json.tmp"
        tmp.write_text(data)
        tmp.replace(self.directory / f"{self.pid}.json")
        self._last = data

    def render(self) -> str:
        others, live = [], []
        for pid, snap in self._others():
            others.append(snap)
            if pid_alive(pid):
                live.append(snap)
        return self.metrics.render(others, live=live)

    def _others(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            stem, _, ext = name.partition(".")
            if ext != "json" or not stem.isdigit() or int(stem) == self.pid:
                continue
            try:
                with open(self.directory / name, "rb") as f:
                    snap = json.loads(f.read(_MAX_FILE_BYTES))
            except (OSError, ValueError):
                continue  # gone or replaced meanwhile: the next scrape reads the new one
            if isinstance(snap, dict):
                yield int(stem), snap

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
            log.warning("could not share this worker's metrics in %s: %s", self.directory, exc)
