"""How library code reports progress without printing: the CLI passes a Reporter in."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullReporter", "Reporter"]


class Reporter(Protocol):
    def stage(self, message: str) -> None:
        """A step starts (one line for humans)."""

    def start(self, label: str, total: int | None) -> None:
        """A byte-counted task starts."""

    def advance(self, nbytes: int) -> None:
        """*nbytes* more bytes done in the current task."""

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
