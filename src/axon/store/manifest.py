"""The package manifest (``manifest.yaml``): dataclasses, load/validate, dump.

A manifest whose file list holds an absolute path, a ``..`` segment, or a path that resolves
(through symlinks) outside its version directory is invalid everywhere it is read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash
import yaml

from axon.errors import AxonError, InvalidManifestError
from axon.store.atomic import atomic_write_bytes
from axon.store.layout import MANIFEST_NAME, StoreLayout, contains
from axon.store.spec import ModelSpec

__all__ = [
    "API_VERSION",
    "MAX_MANIFEST_BYTES",
    "FileEntry",
    "Manifest",
    "TensorSpec",
    "compute_integrity_digest",
    "load_manifest",
    "manifest_digest_of",
    "parse_manifest",
    "read_version_manifest",
    "safe_relative_path",
    "write_manifest",
]

API_VERSION = "axon.mlos.io/v1"
INTEGRITY_ALGORITHM = "xxh3_128"
MAX_MANIFEST_BYTES = 16 << 20  # far above any real manifest; never read more than this into memory
_SHA256 = re.compile(r"[0-9a-f]{64}")
_XXH3 = re.compile(r"[0-9a-f]{32}")
SOURCE_TYPES = ("hf", "url", "local")


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    xxh3_128: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "xxh3_128": self.xxh3_128}


class _FlowList(list[Any]):
    """A list YAML writes on one line: shapes read better as [-1, -1, 384]."""


yaml.SafeDumper.add_representer(
    _FlowList, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": _FlowList(self.shape)}


@dataclass(slots=True)
class Manifest:
    namespace: str
    name: str
    version: str
    source: dict[str, Any]
    entrypoint: str
    opset: int
    files: list[FileEntry]
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    description: str | None = None
    license: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    requirements: dict[str, Any] | None = None
    digest: str = ""
    # sha256 of the manifest document's own bytes, as read or written ("sha256:<hex>"; "" for a
    # manifest only built in memory). Unlike *digest* it covers every field, and it is cryptographic.
    manifest_digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.files = sorted(self.files, key=lambda f: f.path)
        if not self.digest:
            self.digest = compute_integrity_digest(self.files)

    @property
    def spec_text(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"namespace": self.namespace, "name": self.name, "version": self.version}
        if self.description:
            metadata["description"] = self.description
        if self.license:
            metadata["license"] = self.license
        metadata["created"] = self.created
        spec: dict[str, Any] = {
            "format": {"type": "onnx", "entrypoint": self.entrypoint, "opset": self.opset},
            "files": [f.to_dict() for f in self.files],
            "io": {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]},
        }
        if self.preprocessing:
            spec["preprocessing"] = self.preprocessing
        if self.postprocessing:
            spec["postprocessing"] = self.postprocessing
        if self.requirements:
            spec["requirements"] = self.requirements
        return {
            "apiVersion": API_VERSION,
            "kind": "Model",
            "metadata": metadata,
            "source": {k: v for k, v in self.source.items() if v is not None},
            "spec": spec,
            "integrity": {"algorithm": INTEGRITY_ALGORITHM, "digest": self.digest},
        }

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def manifest_digest_of(data: bytes) -> str:
    """The manifest digest of a manifest document: ``sha256:`` and the sha256 of its bytes (as an
    OCI manifest is named). Pinning it pins every field and, through the files' sha256, every byte."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compute_integrity_digest(files: Iterable[FileEntry]) -> str:
    """xxh3-128 over the sorted ``path, size, xxh3`` list (one ``path\\tsize\\txxh3\\n`` line each)."""
    h = xxhash.xxh3_128()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\t{f.size}\t{f.xxh3_128}\n".encode())
    return h.hexdigest()


def safe_relative_path(path: str, where: str = "manifest") -> str:
    """Reject paths that could escape a version directory; return the normalised POSIX path."""
    if not isinstance(path, str) or path == "":
        raise InvalidManifestError(f"Invalid {where}: a file path is empty or not a string ({path!r}).")
    if any(ord(c) < 32 for c in path) or "\\" in path:
        raise InvalidManifestError(f"Invalid {where}: file path {path!r} holds a control character or backslash.")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise InvalidManifestError(f"Invalid {where}: file path {path!r} is absolute.")
    if ".." in pure.parts or "." in path.split("/"):
        raise InvalidManifestError(f"Invalid {where}: file path {path!r} contains '..' or '.' segments.")
    if path == MANIFEST_NAME:
        raise InvalidManifestError(f"Invalid {where}: the manifest may not list itself.")
    return str(pure)


def _req(mapping: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise InvalidManifestError(f"Invalid manifest: missing '{where}{key}'.")
    value = mapping[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InvalidManifestError(f"Invalid manifest: '{where}{key}' has the wrong type ({value!r}).")
    return value


def _tensors(items: Any, where: str) -> list[TensorSpec]:
    if not isinstance(items, list):
        raise InvalidManifestError(f"Invalid manifest: '{where}' must be a list.")
    out = []
    for t in items:
        shape = _req(t, "shape", list, f"{where}[].")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidManifestError(f"Invalid manifest: '{where}[].shape' must hold integers.")
        out.append(TensorSpec(_req(t, "name", str, f"{where}[]."), _req(t, "dtype", str, f"{where}[]."), shape))
    return out


def manifest_from_dict(data: Any, *, version_dir: Path | None = None) -> Manifest:
    """Validate a parsed manifest document.

    Raises:
        InvalidManifestError: naming the first problem found.
    """
    if not isinstance(data, Mapping):
        raise InvalidManifestError("Invalid manifest: the document is not a mapping.")
    if data.get("apiVersion") != API_VERSION:
        raise InvalidManifestError(f"Invalid manifest: apiVersion must be {API_VERSION!r}, "
                                   f"not {data.get('apiVersion')!r}.")
    if data.get("kind") != "Model":
        raise InvalidManifestError(f"Invalid manifest: kind must be 'Model', not {data.get('kind')!r}.")
    meta = _req(data, "metadata", Mapping, "")
    source = _req(data, "source", Mapping, "")
    if source.get("type") not in SOURCE_TYPES:
        raise InvalidManifestError(f"Invalid manifest: source.type must be one of {SOURCE_TYPES}.")
    spec = _req(data, "spec", Mapping, "")
    fmt = _req(spec, "format", Mapping, "spec.")
    if fmt.get("type") != "onnx":
        raise InvalidManifestError(f"Invalid manifest: spec.format.type must be 'onnx', not {fmt.get('type')!r}.")
    entrypoint = safe_relative_path(_req(fmt, "entrypoint", str, "spec.format."))
    files: list[FileEntry] = []
    seen: set[str] = set()
    for item in _req(spec, "files", list, "spec."):
        rel = safe_relative_path(_req(item, "path", str, "spec.files[]."))
        if rel in seen:
            raise InvalidManifestError(f"Invalid manifest: file {rel!r} is listed twice.")
        seen.add(rel)
        size = _req(item, "size", int, "spec.files[].")
        if size < 0:
            raise InvalidManifestError(f"Invalid manifest: file {rel!r} has a negative size.")
        if version_dir is not None and not contains(version_dir, version_dir / rel):
            raise InvalidManifestError(
                f"Invalid manifest: file {rel!r} resolves outside its version directory {str(version_dir)!r}."
            )
        sha256, xxh3 = _req(item, "sha256", str, "spec.files[]."), _req(item, "xxh3_128", str, "spec.files[].")
        if not _SHA256.fullmatch(sha256) or not _XXH3.fullmatch(xxh3):
            raise InvalidManifestError(f"Invalid manifest: file {rel!r} needs a sha256 of 64 and an xxh3_128 of 32 "
                                       "lowercase hex digits.")
        files.append(FileEntry(rel, size, sha256, xxh3))
    if entrypoint not in seen:
        raise InvalidManifestError(f"Invalid manifest: entrypoint {entrypoint!r} is not among spec.files.")
    io = spec.get("io") or {}
    integrity = _req(data, "integrity", Mapping, "")
    if integrity.get("algorithm") != INTEGRITY_ALGORITHM:
        raise InvalidManifestError(f"Invalid manifest: integrity.algorithm must be {INTEGRITY_ALGORITHM!r}.")
    digest = _req(integrity, "digest", str, "integrity.")
    manifest = Manifest(
        namespace=_req(meta, "namespace", str, "metadata."),
        name=_req(meta, "name", str, "metadata."),
        version=str(_req(meta, "version", (str, int, float), "metadata.")),
        description=meta.get("description"),
        license=meta.get("license"),
        created=str(meta.get("created", "")),
        source=dict(source),
        entrypoint=entrypoint,
        opset=int(fmt.get("opset") or 0),
        files=files,
        inputs=_tensors(io.get("inputs", []), "spec.io.inputs"),
        outputs=_tensors(io.get("outputs", []), "spec.io.outputs"),
        preprocessing=spec.get("preprocessing"),
        postprocessing=spec.get("postprocessing"),
        requirements=spec.get("requirements"),
        digest=digest,
    )
    expected = compute_integrity_digest(manifest.files)
    if digest != expected:
        raise InvalidManifestError(
            f"Invalid manifest: integrity.digest {digest!r} does not match its file list ({expected!r})."
        )
    return manifest


def parse_manifest(data: bytes, where: str, *, version_dir: Path | None = None) -> Manifest:
    """Validate manifest bytes already read (once) from *where*; the caller keeps what it parsed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidManifestError(f"Manifest {where!r} is not UTF-8 text.") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidManifestError(f"Manifest {where!r} is not valid YAML.") from exc
    manifest = manifest_from_dict(doc, version_dir=version_dir)
    manifest.manifest_digest = manifest_digest_of(data)
    return manifest


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``manifest.yaml``; file paths are checked against its directory.

    The manifest itself is never read through a symlink (``O_NOFOLLOW``).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO never blocks
    except FileNotFoundError:
        raise InvalidManifestError(f"No manifest at {str(path)!r}.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidManifestError(f"Manifest {str(path)!r} is a symlink; a manifest must be a regular file.") \
                from None
        raise InvalidManifestError(f"Cannot read manifest {str(path)!r}: {exc.strerror}.") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidManifestError(f"Manifest {str(path)!r} is not a regular file.")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)  # bounded: one still growing is cut off here too
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidManifestError(f"Manifest {str(path)!r} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; "
                                       "it is not one axon wrote.")
    except OSError as exc:
        raise InvalidManifestError(f"Cannot read manifest {str(path)!r}: {exc.strerror}.") from exc
    finally:
        os.close(fd)
    return parse_manifest(data, str(path), version_dir=path.parent)


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file, fsync, rename, fsync dir): written last."""
    target = version_dir / MANIFEST_NAME
    data = manifest.dump().encode()
    atomic_write_bytes(target, data, mode=0o644)
    manifest.manifest_digest = manifest_digest_of(data)
    return target


def read_version_manifest(layout: StoreLayout, spec: ModelSpec) -> Manifest | None:
    """The manifest of *spec*'s version in *layout*, or None when there is none (or it is unreadable)."""
    path = layout.manifest_path(spec)
    if not path.is_file():
        return None
    try:
        return load_manifest(path)
    except AxonError:
        return None
