"""The production audit log: append-only JSON Lines under ``<root>/.axon/audit.log``.

Each record is written with one ``write`` on an ``O_APPEND`` descriptor and fsynced. A torn last
line (a crash mid-write) is tolerated: readers report it and carry on.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from axon.errors import AxonError
from axon.permissions import caller

__all__ = ["AuditLog", "AuditRecord"]


@dataclass(slots=True)
class AuditRecord:
    action: str  # publish | unpublish | purge | rollback
    spec: str
    result: str  # ok | unchanged | failed | …
    digest_old: str | None = None
    digest_new: str | None = None
    source: str | None = None
    message: str | None = None
    time: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    user: str = ""
    uid: int = -1
    host: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        if not self.user:
            who = caller()
            self.user, self.uid = who.name, who.uid


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: AuditRecord) -> None:
        line = (json.dumps({k: v for k, v in asdict(record).items() if v is not None}, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o664)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise AxonError(f"Audit log {str(self.path)!r} is a symlink; refusing to write through it.",
                            hint="An administrator repairs the repository: sudo axon setup-production") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AxonError(f"Audit log {str(self.path)!r} is not a regular file; refusing it.",
                                hint="An administrator repairs the repository: sudo axon setup-production")
            os.write(fd, line)  # one write on O_APPEND: concurrent writers never interleave a line
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, spec: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """(records, problems): unparsable lines are skipped and described, never fatal."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            return [], [f"{self.path}: cannot read the audit log ({exc.strerror})"]
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return [], [f"{self.path}: not a regular file, not read"]
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
        records: list[dict[str, Any]] = []
        problems: list[str] = []
        lines = data.split(b"\n")
        torn_tail = data and not data.endswith(b"\n")
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                last = i == len(lines) - 1
                what = "torn last line (a crash mid-write)" if last and torn_tail else "unreadable line"
                problems.append(f"{self.path}:{i + 1}: {what}, skipped")
                continue
            if spec is None or rec.get("spec") == spec:
                records.append(rec)
        return records, problems
