"""Start and stop an ``mlos-core serve`` process on a free port (the demo, tests and benchmarks).

axon never imports mlos_core: the server runs as its own process, as it does in production.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from axon.errors import AxonError

__all__ = ["CoreProcess", "running_core", "start_core"]


@dataclass
class CoreProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (in-flight requests finish), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_core(repository: Path | str, workdir: Path, args: Sequence[str] = (), *, timeout: float = 120) -> CoreProcess:
    """Launch the server with ``--port 0`` and wait until it listens; its output goes to a log file."""
    stamp = time.monotonic_ns()
    port_file = workdir / f"mlos-core-{stamp}.port"
    log = workdir / f"mlos-core-{stamp}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "mlos_core", "serve", "--repository", str(repository),
                                 "--port", "0", "--port-file", str(port_file), *args],
                                stdout=logf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            CoreProcess("", proc, log).stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise AxonError(f"MLOS Core did not start (log {str(log)!r}):\n{tail}")
        time.sleep(0.02)
    return CoreProcess(f"http://127.0.0.1:{port_file.read_text()}", proc, log)


@contextmanager
def running_core(repository: Path | str, workdir: Path, args: Sequence[str] = ()) -> Iterator[CoreProcess]:
    core = start_core(repository, workdir, args)
    try:
        yield core
    finally:
        core.stop()
