"""Named instants where the crash-safety tests kill a process (``AXON_CRASH_AT=<name>``).

The kill-at-every-step tests need to stop a publish exactly between two renames, which no
timer can hit reliably; in normal runs this is one environment lookup per step.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]


def crash_point(name: str) -> None:
    if os.environ.get("AXON_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
