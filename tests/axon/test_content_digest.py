"""The Content-Digest field (RFC 9530) comes from the network: it parses what a server would send,
and anything else is absent, never an exception."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from axon.sources.content_digest import parse_content_digest


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@given(st.binary(max_size=256))
def test_a_sha256_member_gives_its_digest(body: bytes) -> None:
    digest = hashlib.sha256(body).digest()
    assert parse_content_digest(f"sha-256=:{b64(digest)}:") == ("sha256", digest)
    other = hashlib.sha512(body).digest()
    assert parse_content_digest(f"md5=:{b64(digest[:16])}:, sha-512=:{b64(other)}:;p=1 ,sha-256=:{b64(digest)}:") \
        == ("sha256", digest)  # sha-256 preferred, deprecated md5 and parameters skipped
    assert parse_content_digest(f"sha-512=:{b64(other)}:") == ("sha512", other)


@given(st.binary(min_size=1, max_size=80).filter(lambda d: len(d) not in (32, 64)))
def test_a_digest_of_the_wrong_length_is_absent(digest: bytes) -> None:
    assert parse_content_digest(f"sha-256=:{b64(digest)}:") is None


def test_what_proves_nothing_is_absent() -> None:
    for field in (None, "", "sha-256=abc", "SHA-256=:" + b64(bytes(32)) + ":", "sha-256=:not base64!:",
                  "md5=:" + b64(bytes(16)) + ":", "sha-256=:" + b64(bytes(32))[:-1] + ":", "x" * 5000):
        assert parse_content_digest(field) is None, field


@given(st.text(max_size=300))
def test_any_text_parses_or_is_absent(field: str) -> None:
    got = parse_content_digest(field)
    assert got is None or (got[0] in ("sha256", "sha512") and len(got[1]) in (32, 64))
