"""The object store under an s3:// repository, against a real S3 server (moto in server mode)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from axon.errors import ConflictError, StoreError, UsageError
from axon.store import s3
from axon.store.s3 import ObjectStore, S3Location, probe_conditional_writes
from tests.support.s3_server import CREDENTIALS, condition_dropping_proxy, new_bucket


@pytest.fixture
def endpoint(s3_endpoint: str) -> str:
    return s3_endpoint


@pytest.fixture
def store(s3_publish_dir: str) -> ObjectStore:
    return ObjectStore(S3Location.parse(s3_publish_dir))


def test_locations_parse_strictly() -> None:
    assert S3Location.parse("s3://models/prod/v1/") == S3Location("models", "prod/v1")
    assert S3Location.parse("s3://models") == S3Location("models", "")
    assert S3Location("models", "prod").key("ns/a/1/manifest.yaml") == "prod/ns/a/1/manifest.yaml"
    for bad in ("s3://Models/x", "s3://m/../x", "s3://models/a//b", "s3://models/a/./b", "http://models/x",
                "s3://ab", "s3://models/a b"):
        with pytest.raises(UsageError):
            S3Location.parse(bad)


@given(st.text(max_size=80))
def test_a_location_either_parses_or_is_refused_cleanly(url: str) -> None:
    try:
        loc = S3Location.parse("s3://" + url)
    except UsageError:
        return
    parts = loc.prefix.split("/") if loc.prefix else []
    assert ".." not in parts and "" not in parts and "." not in parts
    assert S3Location.parse(str(loc)) == loc


def test_create_only_and_replace_if_unchanged(store: ObjectStore) -> None:
    etag = store.put_if_absent("ns/a/1/manifest.yaml", b"one")
    with pytest.raises(ConflictError, match="another writer got there first"):
        store.put_if_absent("ns/a/1/manifest.yaml", b"two")
    with pytest.raises(ConflictError):
        store.replace_if("ns/a/1/manifest.yaml", b"two", '"0123456789abcdef0123456789abcdef"')
    new = store.replace_if("ns/a/1/manifest.yaml", b"two", etag)
    assert store.get("ns/a/1/manifest.yaml") == (b"two", new)
    with pytest.raises(ConflictError):  # the first ETag is stale now
        store.replace_if("ns/a/1/manifest.yaml", b"three", etag)
    assert store.get("ns/a/1/missing") is None
    assert list(store.list_keys("ns/")) == ["ns/a/1/manifest.yaml"]


@pytest.mark.parametrize("size", [0, 1, s3.PART_BYTES, s3.PART_BYTES + 1, 3 * s3.PART_BYTES + 7])
def test_upload_hashes_what_it_sends_and_creates_once(store: ObjectStore, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    seen: list[int] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = store.upload_file("ns/a/1/d/weights.bin", fd, size, progress=seen.append)
        with pytest.raises(ConflictError):
            store.upload_file("ns/a/1/d/weights.bin", fd, size)
    finally:
        os.close(fd)
    assert (digest.size, digest.sha256, digest.xxh3_128) == (size, hashlib.sha256(data).hexdigest(),
                                                              xxhash.xxh3_128_hexdigest(data))
    assert sum(seen) == size
    got = bytearray()
    back = store.download("ns/a/1/d/weights.bin", got.extend)
    assert bytes(got) == data and back == digest


def test_a_file_that_shrinks_during_the_upload_is_refused(store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(s3.PART_BYTES + 10))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(StoreError, match="changed size"):
            store.upload_file("ns/a/1/d/w.bin", fd, s3.PART_BYTES + 100)
    finally:
        os.close(fd)
    assert store.get("ns/a/1/d/w.bin") is None  # the multipart upload was aborted, nothing is visible


def test_the_probe_accepts_a_store_that_keeps_its_promises(store: ObjectStore) -> None:
    probe_conditional_writes(store)
    assert list(store.list_keys(".axon/")) == []  # the probe cleans up after itself


def test_the_probe_refuses_a_store_that_ignores_conditional_writes(endpoint: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(endpoint)
    with condition_dropping_proxy(endpoint) as proxied:
        for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": proxied}.items():
            monkeypatch.setenv(key, value)
        store = ObjectStore(S3Location(bucket, "prod"))
        with pytest.raises(StoreError, match="ignores conditional writes"):
            probe_conditional_writes(store)


def test_a_missing_bucket_says_so(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StoreError, match="does not exist") as info:
        ObjectStore(S3Location("no-such-bucket-here", "p")).put_if_absent("x", b"1")
    assert info.value.hint and "setup-production" in info.value.hint


def test_downloads_stop_at_the_expected_size_and_deletes_can_be_conditional(store: ObjectStore) -> None:
    etag = store.put_if_absent("ns/a/1/d/w.bin", b"x" * 1000)
    got = bytearray()
    digest = store.download("ns/a/1/d/w.bin", got.extend, size=10)  # the object grew: only 10 bytes are taken
    assert bytes(got) == b"x" * 10 and digest.size == 10
    got.clear()
    store.download("ns/a/1/d/w.bin", got.extend, offset=995, size=1000)
    assert bytes(got) == b"x" * 5
    with pytest.raises(ConflictError):
        store.delete_if("ns/a/1/d/w.bin", '"0123456789abcdef0123456789abcdef"')
    store.delete_if("ns/a/1/d/w.bin", etag)
    assert store.get("ns/a/1/d/w.bin") is None


def test_a_small_object_read_is_bounded(store: ObjectStore) -> None:
    store.put_if_absent("ns/a/1/manifest.yaml", b"y" * 2000)
    with pytest.raises(StoreError, match="larger than 1000 bytes"):
        store.get("ns/a/1/manifest.yaml", limit=1000)
