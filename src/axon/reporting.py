"""How library code reports progress without printing: the CLI passes a Reporter in."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullReporter", "Reporter", "WholeTask"]


class Reporter(Protocol):
    def stage(self, message: str) -> None:
        """A step starts (one line for humans)."""

    def start(self, label: str, total: int | None) -> None:
        """A byte-counted task starts."""

    def advance(self, nbytes: int) -> None:
        """*nbytes* more bytes done in the current task (negative: bytes of a failed part, to come again)."""

    def finish(self) -> None:
        """The current byte-counted task ended."""

    def warn(self, message: str) -> None:
        """Something worth telling the user that does not fail the command."""


class NullReporter:
    def stage(self, message: str) -> None:
        pass

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


class WholeTask:
    """One byte-counted task made of many: the files of an install, fetched one after another or
    several at once, advance one bar (their own start/finish are absorbed). Thread-safe."""

    def __init__(self, inner: Reporter, label: str, total: int | None) -> None:
        import threading

        self._inner = inner
        self._lock = threading.Lock()
        self.done = 0
        inner.start(label, total)

    def stage(self, message: str) -> None:
        with self._lock:
            self._inner.stage(message)

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            self._inner.advance(nbytes)

    def finish(self) -> None:
        pass

    def warn(self, message: str) -> None:
        with self._lock:
            self._inner.warn(message)

    def close(self) -> None:
        with self._lock:
            self._inner.finish()
