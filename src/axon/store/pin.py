"""Digest pins: the manifest a registration or a fetch insists on.

A pin has one of two forms:

* ``sha256:<64 hex>``, the **manifest digest** (:func:`axon.store.manifest.manifest_digest_of`):
  the sha256 of the manifest document itself. It pins every field of that one publish (files,
  preprocessing, pooling, I/O), and a host honouring it checks every file's sha256, so what loads
  is the published bytes with a cryptographic guarantee. This is the pin to use across a fleet.
* ``<32 hex>``, the **content digest** (``integrity.digest``, xxh3-128 over the file list): it
  catches a republish with other files, fast, but it is not cryptographic and does not cover the
  manifest's other fields (a republish that only changes pooling keeps it).
"""

from __future__ import annotations

import re

from axon.store.manifest import Manifest

__all__ = ["PIN_FORMS", "is_manifest_pin", "is_pin", "pin_matches", "published_as"]

PIN_FORMS = "sha256:<64 hex digits> (the manifest digest) or 32 hex digits (the content digest)"
_PIN = re.compile(r"sha256:[0-9a-f]{64}|[0-9a-f]{32}")


def is_pin(text: object) -> bool:
    return isinstance(text, str) and _PIN.fullmatch(text) is not None


def is_manifest_pin(pin: str | None) -> bool:
    """Whether *pin* names a manifest digest (and so asks for sha256 verification of every file)."""
    return pin is not None and pin.startswith("sha256:")


def published_as(manifest: Manifest, pin: str) -> str:
    """*manifest*'s digest in the form *pin* has (what to show next to a pin that differs)."""
    return manifest.manifest_digest if is_manifest_pin(pin) else manifest.digest


def pin_matches(manifest: Manifest, pin: str | None) -> bool:
    """Whether *manifest* is the one *pin* names (no pin: any)."""
    return pin is None or published_as(manifest, pin) == pin
