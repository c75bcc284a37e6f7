"""The ``Content-Digest`` field of an HTTP answer (RFC 9530): the digest of the bytes this one
answer carries, so a ``206`` part can be checked on its own before it is written down as done.

Only ``sha-256`` and ``sha-512`` count (the RFC's deprecated algorithms prove nothing against a
bad proxy). The field is a Structured Fields dictionary (RFC 8941) of ``algorithm=:base64:``;
anything that does not parse, or a digest of the wrong length, is treated as absent (the whole
file's own digest still decides).
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["ALGORITHMS", "WANT_CONTENT_DIGEST", "parse_content_digest"]

ALGORITHMS = {"sha-256": ("sha256", 32), "sha-512": ("sha512", 64)}  # field name -> (hashlib name, bytes)
WANT_CONTENT_DIGEST = "sha-256=10, sha-512=3"  # the request field that asks a server for one (RFC 9530 §4)
_MEMBER = re.compile(r"([a-z*][a-z0-9_.*-]*)=:([A-Za-z0-9+/]*={0,2}):(?:;.*)?")


def parse_content_digest(field: str | None) -> tuple[str, bytes] | None:
    """(hashlib algorithm name, digest) from a ``Content-Digest`` field, sha-256 preferred; None
    when the field is missing or gives neither algorithm in a well-formed member."""
    if not field or len(field) > 4096:
        return None
    found: dict[str, bytes] = {}
    for member in field.split(","):
        m = _MEMBER.fullmatch(member.strip(" \t"))
        if m is None or m.group(1) not in ALGORITHMS:
            continue
        try:
            digest = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            continue
        name, length = ALGORITHMS[m.group(1)]
        if len(digest) == length:
            found.setdefault(name, digest)
    for name in ("sha256", "sha512"):
        if name in found:
            return name, found[name]
    return None
