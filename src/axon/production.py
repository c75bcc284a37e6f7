"""``axon setup-production``: the one-time, as-root creation of the production repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from axon.errors import AxonError, PermissionDeniedError
from axon.permissions import SHARED_DIR_MODE, group_id

__all__ = ["setup_production"]

STATE_DIRS = ("staging", "locks", "history")


def _create_group(group: str) -> int:
    tool = shutil.which("groupadd") or shutil.which("addgroup")
    if tool is None:
        raise AxonError(f"Group {group!r} does not exist and neither groupadd nor addgroup is installed.",
                        hint=f"Create the group yourself, then run again: groupadd --system {group}")
    args = [tool, "--system", group]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    gid = group_id(group)
    if proc.returncode != 0 or gid is None:
        raise AxonError(f"Creating group {group!r} failed: {proc.stderr.strip() or proc.returncode}.")
    return gid


def _own(path: Path, gid: int, mode: int) -> None:
    os.chown(path, 0, gid)
    os.chmod(path, mode)


def setup_production(root: Path, group: str) -> dict[str, Any]:
    """Create *group* if missing, then ``root`` (root:group, 2775) and ``root/.axon/`` state.

    Idempotent: running it again fixes ownership and modes and changes nothing else.
    """
    if os.geteuid() != 0:
        raise PermissionDeniedError("setup-production creates a group and a system directory: it must run as root.",
                                    hint=f"Run: sudo axon setup-production --dir {root} --group {group}")
    created_group = False
    gid = group_id(group)
    if gid is None:
        gid = _create_group(group)
        created_group = True
    root.mkdir(parents=True, exist_ok=True)
    _own(root, gid, SHARED_DIR_MODE)
    internal = root / ".axon"
    internal.mkdir(exist_ok=True)
    _own(internal, gid, SHARED_DIR_MODE)
    for name in STATE_DIRS:
        d = internal / name
        d.mkdir(exist_ok=True)
        _own(d, gid, SHARED_DIR_MODE)
    audit = internal / "audit.log"
    fd = os.open(audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o664)
    os.close(fd)
    _own(audit, gid, 0o664)
    append_only = False
    if shutil.which("chattr"):
        # Kernel-enforced append-only: not even a group member can rewrite history.
        append_only = subprocess.run(["chattr", "+a", str(audit)], capture_output=True, check=False).returncode == 0
    return {"root": str(root), "group": group, "gid": gid, "created_group": created_group,
            "state_dir": str(internal), "audit_log": str(audit), "audit_append_only": append_only}
