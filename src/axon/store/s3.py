"""An S3-compatible object store as the repository's storage (AWS S3, MinIO, Ceph RGW, R2, GCS).

What the repository needs from a store, and nothing more:

* **create-only writes** (``If-None-Match: *``): a data object, a first manifest, an audit event;
* **replace-if-unchanged** (``If-Match: <etag>``): a manifest replaced by ``--force`` or a rollback,
  so that of two racing publishers one wins and the other is told why (:class:`ConflictError`);
* reads and listings.

Large files go up as parallel multipart uploads; each file is hashed (sha256 + xxh3-128) from the
bytes as they are read for the upload, so hashing overlaps the upload instead of being a second
pass. The store's own checksums (ETags, CRCs) are never trusted: the manifest's digests are the
authority, checked by the reader on the bytes it receives.

The client is boto3 (optional extra ``s3``), configured the standard AWS way: credentials and
region from the environment, ``~/.aws/config`` or an instance role; ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for S3-compatible servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import xxhash

from axon.errors import AxonError, ConflictError, StoreError, UsageError
from axon.store.fastio import FileDigest

__all__ = ["PART_BYTES", "ObjectStore", "S3Location", "is_s3_url", "probe_conditional_writes"]

PART_BYTES = 16 << 20  # multipart part size: 8 parts in flight per file keep ~144 MiB in memory at most
SMALL_OBJECT_BYTES = 16 << 20  # the most a manifest, an audit event or a record may hold
PARTS_IN_FLIGHT = 8
# Each part carries a CRC32 (computed by botocore in the uploading threads) that the store checks
# on receipt and combines at completion: a part damaged on the way is refused at once. Without
# one, S3 (and moto) computes a full-object CRC64 over the whole file when it completes it,
# which on moto costs more than the upload itself. This guards the transfer only; the manifest's
# digests stay the authority on content.
PART_CHECKSUM = "CRC32"
READ_BYTES = 1 << 20

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9._~+@=-]+$")

Progress = Callable[[int], object] | None


def is_s3_url(value: str | os.PathLike[str]) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


@dataclass(frozen=True, slots=True)
class S3Location:
    """``s3://BUCKET[/PREFIX]``: where a repository lives in an object store."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise UsageError(f"{url!r} is not an s3:// URL.", hint="Write it as s3://BUCKET/PREFIX")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise UsageError(f"{url!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, "
                             "'.' and '-').")
        parts = [p for p in prefix.split("/")]
        if prefix.endswith("/"):
            parts.pop()
        if prefix and not all(_PREFIX_PART.fullmatch(p) and p not in (".", "..") for p in parts):
            raise UsageError(f"{url!r}: the prefix must be '/'-separated names of letters, digits and "
                             "'._~+@=-' (no empty, '.' or '..' parts).")
        return cls(bucket, "/".join(parts) if prefix else "")

    def key(self, rel: str) -> str:
        """The object key of *rel* (a '/'-separated path under the repository)."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("An s3:// repository needs boto3, which is not installed.",
                         hint="pip install 'axon-mlos[s3]'") from None
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32,
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", config=config)


def _code(exc: Exception) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    return (str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0))


class ObjectStore:
    """One repository's objects in one bucket (keys under its prefix)."""

    def __init__(self, location: S3Location, client: Any | None = None) -> None:
        self.location = location
        self.client = client if client is not None else _client()

    def _fail(self, exc: Exception, what: str, rel: str) -> AxonError:
        code, status = _code(exc)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return ConflictError(f"{what} {self.location.key(rel)!r} in {self.location}: another writer got there "
                                 "first.", hint="Look at what is there now (axon published, axon audit), then retry.")
        if code in ("NoSuchBucket",):
            return StoreError(f"Bucket {self.location.bucket!r} does not exist.",
                              hint=f"Create it, then run: axon setup-production --dir {self.location}")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken") or status == 403:
            return StoreError(f"{what} {self.location.key(rel)!r} in {self.location} was refused ({code or status}).",
                              hint="Check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID) and the bucket policy "
                              "(docs/operations.md has the minimal one).")
        detail = code or type(exc).__name__
        return StoreError(f"{what} {self.location.key(rel)!r} in {self.location} failed: {detail}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "),
                          hint="Check the endpoint (AWS_ENDPOINT_URL) and the network.")

    def _call(self, what: str, rel: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.location.bucket, Key=self.location.key(rel), **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, what, rel) from None

    # --- small objects -----------------------------------------------------------------------

    def put_if_absent(self, rel: str, data: bytes) -> str:
        """Create *rel* holding *data*; ConflictError if it exists. Returns its ETag."""
        return str(self._call("Creating", rel, self.client.put_object, Body=data, IfNoneMatch="*")["ETag"])

    def replace_if(self, rel: str, data: bytes, etag: str) -> str:
        """Replace *rel* only if it is still the object *etag* names; ConflictError if not."""
        return str(self._call("Replacing", rel, self.client.put_object, Body=data, IfMatch=etag)["ETag"])

    def get(self, rel: str, *, limit: int = SMALL_OBJECT_BYTES) -> tuple[bytes, str] | None:
        """(*rel*'s bytes, its ETag), or None when there is no such object; StoreError when it is
        larger than *limit* (a manifest or an audit event is small; anything else is not one)."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(rel))
        except ClientError as exc:
            if _code(exc)[0] in ("NoSuchKey", "404") or _code(exc)[1] == 404:
                return None
            raise self._fail(exc, "Reading", rel) from None
        if int(response.get("ContentLength", 0)) > limit:
            response["Body"].close()
            raise StoreError(f"{self.location.key(rel)!r} in {self.location} is larger than {limit} bytes; it is not "
                             "what axon writes there.")
        with response["Body"] as body:
            try:
                data = body.read(limit + 1)
            except Exception as exc:  # botocore/urllib3 errors while the body streams
                raise StoreError(f"Reading {self.location.key(rel)!r} in {self.location} failed: "
                                 f"{type(exc).__name__}") from None
        if len(data) > limit:
            raise StoreError(f"{self.location.key(rel)!r} in {self.location} is larger than {limit} bytes; it is not "
                             "what axon writes there.")
        return data, str(response["ETag"])

    def get_size(self, rel: str) -> int | None:
        """*rel*'s size, or None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.head_object(Bucket=self.location.bucket, Key=self.location.key(rel))
        except ClientError as exc:
            if _code(exc)[1] == 404 or _code(exc)[0] in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail(exc, "Reading", rel) from None
        return int(response["ContentLength"])

    def delete(self, rel: str) -> None:
        self._call("Deleting", rel, self.client.delete_object)

    def delete_if(self, rel: str, etag: str) -> None:
        """Delete *rel* only if it is still the object *etag* names; ConflictError if not."""
        self._call("Deleting", rel, self.client.delete_object, IfMatch=etag)

    def list_keys(self, rel_prefix: str = "") -> Iterator[str]:
        """Every key under *rel_prefix*, relative to the repository, in the store's (lexical) order."""
        from botocore.exceptions import BotoCoreError, ClientError

        start = self.location.key(rel_prefix) if rel_prefix else (self.location.prefix + "/" if
                                                                    self.location.prefix else "")
        strip = len(self.location.prefix) + 1 if self.location.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                              Prefix=start):
                for item in page.get("Contents", []):
                    yield str(item["Key"])[strip:]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "Listing", rel_prefix) from None

    # --- files ---------------------------------------------------------------------------------

    def upload_file(self, rel: str, fd: int, size: int, *, progress: Progress = None) -> FileDigest:
        """Create *rel* from the open file *fd* (read from offset 0, *size* bytes), hashing the bytes
        as they are read for the upload. Returns the digests of what was sent; the caller compares
        them with the manifest before anything names the object. ConflictError if *rel* exists."""
        sha, xxh = hashlib.sha256(), xxhash.xxh3_128()

        def read_part(offset: int, length: int) -> bytes:
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise StoreError(f"{rel!r} changed size while it was uploaded ({size} bytes expected).")
            sha.update(data)
            xxh.update(data)
            return data

        if size <= PART_BYTES:
            self._call("Creating", rel, self.client.put_object, Body=read_part(0, size), IfNoneMatch="*")
            if progress is not None:
                progress(size)
            return FileDigest(size, sha.hexdigest(), xxh.hexdigest())
        upload_id = str(self._call("Creating", rel, self.client.create_multipart_upload,
                                   ChecksumAlgorithm=PART_CHECKSUM)["UploadId"])
        try:
            parts = self._upload_parts(rel, upload_id, size, read_part, progress)
            self._call("Creating", rel, self.client.complete_multipart_upload, UploadId=upload_id,
                       MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException:
            from botocore.exceptions import BotoCoreError, ClientError

            # If this fails too, the bucket's lifecycle rule for incomplete uploads removes it (docs/operations.md).
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.location.bucket, Key=self.location.key(rel),
                                                   UploadId=upload_id)
            raise
        return FileDigest(size, sha.hexdigest(), xxh.hexdigest())

    def _upload_parts(self, rel: str, upload_id: str, size: int, read_part: Callable[[int, int], bytes],
                      progress: Progress) -> list[dict[str, Any]]:
        """Parts read (and hashed) in order on this thread, uploaded by a pool, at most
        PARTS_IN_FLIGHT held in memory at once."""
        done: list[dict[str, Any]] = []
        in_flight: list[tuple[int, Future[Any], int]] = []

        def collect(entry: tuple[int, Future[Any], int]) -> None:
            number, future, length = entry
            response = future.result()
            done.append({"PartNumber": number, "ETag": response["ETag"],
                         "ChecksumCRC32": response["ChecksumCRC32"]})
            if progress is not None:
                progress(length)

        with ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="axon-s3") as pool:
            try:
                for number, offset in enumerate(range(0, size, PART_BYTES), start=1):
                    length = min(PART_BYTES, size - offset)
                    data = read_part(offset, length)
                    future = pool.submit(self._call, "Uploading", rel, self.client.upload_part, UploadId=upload_id,
                                         PartNumber=number, Body=data, ChecksumAlgorithm=PART_CHECKSUM)
                    in_flight.append((number, future, length))
                    if len(in_flight) >= PARTS_IN_FLIGHT:
                        collect(in_flight.pop(0))
                while in_flight:
                    collect(in_flight.pop(0))
            except BaseException:
                for _, future, _ in in_flight:
                    future.cancel()
                raise
        return done

    def download(self, rel: str, write: Callable[[bytes], object], *, offset: int = 0,
                 size: int | None = None) -> FileDigest:
        """Stream *rel* (from byte *offset* on) to *write*, hashing what arrives (sha256 + xxh3-128
        of those bytes); the caller compares. With *size* (the object's expected size) nothing past
        it is asked for or written, however large the object has become."""
        if size is not None and offset >= size:
            return FileDigest(0, hashlib.sha256().hexdigest(), xxhash.xxh3_128().hexdigest())
        sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
        got = 0
        want = None if size is None else size - offset
        ranged = {"Range": f"bytes={offset}-{'' if size is None else size - 1}"} if offset or size else {}
        response = self._call("Reading", rel, self.client.get_object, **ranged)
        with response["Body"] as body:
            try:
                while chunk := body.read(READ_BYTES):
                    if want is not None and got + len(chunk) > want:
                        chunk = chunk[: want - got]  # a server that ignores Range: never more than asked for
                    sha.update(chunk)
                    xxh.update(chunk)
                    got += len(chunk)
                    write(chunk)
                    if want is not None and got >= want:
                        break
            except Exception as exc:  # botocore/urllib3 errors while the body streams
                raise StoreError(f"Reading {self.location.key(rel)!r} in {self.location} failed: "
                                 f"{type(exc).__name__}") from None
        return FileDigest(got, sha.hexdigest(), xxh.hexdigest())


def probe_conditional_writes(store: ObjectStore) -> None:
    """Refuse (StoreError) a store that accepts a create-only write over an existing object or a
    replace with a stale ETag: some S3-compatible servers ignore both headers, and a repository on
    one would let two publishers overwrite each other's manifests."""
    rel = f".axon/probes/{uuid.uuid4().hex}"
    etag = store.put_if_absent(rel, b"first")
    def overwrite() -> str:
        return store.put_if_absent(rel, b"second")

    def replace_stale() -> str:
        return store.replace_if(rel, b"third", '"00000000000000000000000000000000"')

    try:
        attempts: list[tuple[str, Callable[[], str]]] = [
            ("a create-only write (If-None-Match: *) over an existing object", overwrite),
            ("a replace with a stale ETag (If-Match)", replace_stale)]
        for attempt, write in attempts:
            try:
                write()
            except ConflictError:
                continue
            raise StoreError(f"The object store at {store.location} accepted {attempt}: it ignores conditional "
                             "writes, so two publishers could overwrite each other's manifests. Refusing it.",
                             hint="Use a store that enforces If-None-Match and If-Match (AWS S3, a recent MinIO, "
                             "Ceph RGW 19+), or a local directory repository.")
        data = store.get(rel)
        if data is None or data[1] != etag:
            raise StoreError(f"The object store at {store.location} changed a probe object it should have kept.")
    finally:
        store.delete(rel)
