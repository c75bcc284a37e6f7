"""A Reporter that keeps what the library told it, for tests to read back."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingReporter:
    stages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tasks: list[tuple[str, int | None, int]] = field(default_factory=list)  # (label, total, bytes done)

    def stage(self, message: str) -> None:
        self.stages.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def start(self, label: str, total: int | None) -> None:
        self.tasks.append((label, total, 0))

    def advance(self, nbytes: int) -> None:
        label, total, done = self.tasks[-1]
        self.tasks[-1] = (label, total, done + nbytes)

    def finish(self) -> None:
        pass
