"""The production audit log: append-only JSON Lines under ``<root>/.axon/audit.log``.

Each record is written with one ``write`` on an ``O_APPEND`` descriptor and fsynced. A torn last
line (a crash mid-write) is tolerated: readers report it and carry on.

The log is ``chattr +a`` (nobody rewrites it) but every publisher may append to it, so a line's
``user``/``uid`` is only a claim. Where ``.axon/audit.d/`` exists (setup-production makes it,
sticky), each record first gets a receipt there: a create-only file holding the same record,
owned (as the kernel sets it) by whoever wrote it, which others cannot remove or replace.
Readers mark a record ``attested`` when its receipt exists, is owned by the uid the record
claims and holds the same record; a forged claim (say, a member appending a "root" record) or a
removed receipt is reported.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from axon.errors import AxonError
from axon.permissions import caller, owner_name
from axon.store.modes import AUDIT_LOG_MODE, FILE_MODE

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
    bytes_copied: int | None = None  # publish: the bytes written anew
    bytes_linked: int | None = None  # publish: the bytes shared (hard links) with other published versions
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

    @property
    def receipts(self) -> Path:
        return self.path.parent / "audit.d"

    def _write_receipt(self, body: bytes, record: AuditRecord) -> str | None:
        if not os.path.isdir(self.receipts) or os.path.islink(self.receipts):
            return None  # a repository set up by hand: claims only
        name = f"{record.time.replace(':', '')}-{record.uid}-{secrets.token_hex(6)}.json"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.receipts / name, flags, FILE_MODE)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        return name

    def append(self, record: AuditRecord) -> None:
        fields = {k: v for k, v in asdict(record).items() if v is not None}
        receipt = self._write_receipt(json.dumps(fields, sort_keys=True).encode(), record)
        if receipt is not None:
            fields["receipt"] = receipt
        line = (json.dumps(fields, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, AUDIT_LOG_MODE)
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
        seen: set[str] = set()
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
            receipt = rec.get("receipt")
            replayed = isinstance(receipt, str) and receipt in seen
            if isinstance(receipt, str):
                seen.add(receipt)
            if spec is None or rec.get("spec") == spec:
                why = self._attest(rec)
                if replayed and rec["attested"]:
                    rec["attested"] = False
                    why = f"the receipt {receipt} was already used by an earlier record (replayed)"
                if why:
                    problems.append(f"{self.path}:{i + 1}: {why}")
                records.append(rec)
        return records, problems

    def _attest(self, rec: dict[str, Any]) -> str | None:
        """Set rec["attested"]; return why a record is not what it claims, if it is not."""
        name = rec.get("receipt")
        rec["attested"] = False
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            return "no receipt: who wrote this record is not attested" if os.path.isdir(self.receipts) else None
        try:
            fd = os.open(self.receipts / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return f"the receipt {name} of this record is missing (removed by its writer?)"
        try:
            st = os.fstat(fd)
            body = os.read(fd, 1 << 20) if stat.S_ISREG(st.st_mode) else b""
        finally:
            os.close(fd)
        claimed = {k: v for k, v in rec.items() if k not in ("attested", "receipt")}
        if st.st_uid != rec.get("uid"):
            return f"the record claims uid {rec.get('uid')} but was written by uid {st.st_uid}"
        if rec.get("user") not in (owner_name(st.st_uid), str(st.st_uid)):
            return f"the record claims user {rec.get('user')!r} but was written by {owner_name(st.st_uid)!r}"
        try:
            same = json.loads(body) == claimed
        except ValueError:
            same = False
        if not same:
            return f"the record differs from its receipt {name}"
        rec["attested"] = True
        return None
