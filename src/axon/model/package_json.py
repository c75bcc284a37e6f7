"""A package's JSON configuration files (config.json, modules.json, …), read strictly at install."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axon.errors import InvalidModelError

__all__ = ["read_package_json"]


def read_package_json(staging: Path, files: set[str], rel: str, *, required: bool = False) -> Any:
    """The parsed *rel* of the package in *staging* (None when it has no such file and it is not *required*).

    Raises:
        InvalidModelError: a required file is missing, or the file is not valid JSON.
    """
    if rel not in files:
        if required:
            raise InvalidModelError(f"The package needs {rel!r}, which is not among its files.")
        return None
    try:
        return json.loads((staging / rel).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"Cannot read the package's {rel!r}: {exc}.") from None
