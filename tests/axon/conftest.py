"""Fixtures for axon's tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A world-traversable directory (pytest's tmp dirs are root-only)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="axon-users-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        subprocess.run(["chattr", "-a", str(base / "prod" / ".axon" / "audit.log")], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
