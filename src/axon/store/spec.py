"""Model specs: ``NAMESPACE/NAME[@VERSION]``, where NAME may hold one ``/`` (Hub org/repo)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from axon.errors import InvalidSpecError

__all__ = ["DEFAULT_VERSION", "ModelSpec", "parse_spec"]

DEFAULT_VERSION = "latest"
MAX_PART = 96
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    namespace: str
    name: str  # may contain one "/"
    version: str = DEFAULT_VERSION

    @property
    def model_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def parts(self) -> tuple[str, ...]:
        """Path components under a store root: (ns, name parts..., version)."""
        return (self.namespace, *self.name.split("/"), self.version)

    @property
    def relpath(self) -> str:
        """Where the version lives under a store root, as a relative POSIX path (``ns/name…/version``)."""
        return "/".join(self.parts)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"


def _check_part(spec: str, part: str, pattern: re.Pattern[str], what: str) -> None:
    if part == "":
        raise InvalidSpecError(spec, f"the {what} is empty")
    if part in (".", ".."):
        raise InvalidSpecError(spec, f"the {what} may not be {part!r}")
    if len(part) > MAX_PART:
        raise InvalidSpecError(spec, f"the {what} is longer than {MAX_PART} characters")
    if not pattern.fullmatch(part):
        allowed = "letters, digits, '.', '_', '-'" + (" and '+'" if what == "version" else "")
        raise InvalidSpecError(
            spec, f"the {what} {part!r} must start with a letter or digit and hold only {allowed}"
        )


def parse_spec(text: str) -> ModelSpec:
    """Parse and validate a spec; a missing version means ``latest``.

    Raises:
        InvalidSpecError: naming what is wrong (exit code 2).
    """
    shown = text if len(text) <= 200 else text[:200] + "…"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidSpecError(shown.encode("unicode_escape").decode(), "it contains a control character")
    if "\\" in text:
        raise InvalidSpecError(shown, "backslashes are not allowed")
    if text.startswith("/"):
        raise InvalidSpecError(shown, "it looks like an absolute path, not NAMESPACE/NAME")
    if text.count("@") > 1:
        raise InvalidSpecError(shown, "it has more than one '@'")
    body, sep, version = text.partition("@")
    if sep and version == "":
        raise InvalidSpecError(shown, "the version after '@' is empty")
    parts = body.split("/")
    if len(parts) < 2:
        raise InvalidSpecError(shown, "it needs a namespace and a name separated by '/'")
    if len(parts) > 3:
        raise InvalidSpecError(shown, "NAME may hold at most one '/' (NAMESPACE/ORG/REPO)")
    _check_part(shown, parts[0], _PART, "namespace")
    for part in parts[1:]:
        _check_part(shown, part, _PART, "name")
    version = version or DEFAULT_VERSION
    _check_part(shown, version, _VERSION, "version")
    return ModelSpec(parts[0], "/".join(parts[1:]), version)
