"""Find a model inside the production repository, refusing anything that is not there.

Containment is checked on resolved paths, component by component (``axon.store.fastio.is_within``:
``/var/lib/mlos/models-evil`` is not inside ``/var/lib/mlos/models``); files are opened with
``open_beneath`` (openat2 RESOLVE_BENEATH), so a symlink swapped in after the check still cannot
lead out; and every file must match its recorded size and xxh3-128 (and its sha256, when the
registration pins a manifest digest) before anything is loaded.

The model itself is read into memory (:func:`read_verified_model`): the entrypoint and every
external data file its graph names, each through ``open_beneath`` and checked on the bytes read,
so what was hashed is what onnxruntime gets, whatever happens to the files afterwards.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from axon.errors import AxonError, IntegrityError, InvalidManifestError, InvalidModelError, InvalidSpecError
from axon.model.inference import VerifiedModel
from axon.model.inference import read_verified_model as _read_model
from axon.model.onnx_signature import ExternalDataOutsideError, UnsupportedOperatorError
from axon.store.fastio import is_within
from axon.store.integrity import verify_version_dir
from axon.store.layout import MANIFEST_NAME, contains
from axon.store.manifest import Manifest, load_manifest
from axon.store.spec import ModelSpec, parse_spec
from mlos_core.errors import ApiError

__all__ = ["Located", "VerifiedModel", "locate", "locate_delivered", "model_refusal", "read_verified_model",
           "verify_files"]


@dataclass(frozen=True)
class Located:
    spec: ModelSpec
    version_dir: Path
    manifest: Manifest


def _outside(what: str, root: Path) -> ApiError:
    return ApiError(403, "outside_repository",
                    f"{what} is outside the model repository {str(root)!r}; MLOS Core only serves published models "
                    "(publish it first: axon publish SPEC)")


def locate(root: Path, *, model_id: str | None = None, manifest_path: str | None = None) -> Located:
    if model_id is not None:
        try:
            spec = parse_spec(model_id)
        except InvalidSpecError as exc:
            raise ApiError(400, "bad_model_id", str(exc)) from None
        version_dir = root / spec.relpath
        manifest_file = version_dir / MANIFEST_NAME
    elif manifest_path is not None:
        if "\x00" in manifest_path or ".." in PurePosixPath(manifest_path).parts:
            raise ApiError(400, "bad_path", f"path {manifest_path!r} may not contain '..' segments")
        p = Path(manifest_path)
        if not p.is_absolute():
            p = root / p
        if p.name != MANIFEST_NAME:
            p = p / MANIFEST_NAME
        manifest_file = p
        version_dir = p.parent
    else:
        raise ApiError(400, "missing_model", "give 'model_id' (ns/name@version) or 'manifest_path'")
    if not os.path.lexists(version_dir) and not is_within(root, root):
        raise ApiError(500, "no_repository", f"model repository {str(root)!r} does not exist")
    # Order matters: refuse what is outside before saying whether it exists.
    probe = manifest_file if os.path.lexists(manifest_file) else version_dir
    if os.path.lexists(probe) and not is_within(root, probe):
        raise _outside(f"path {str(manifest_file)!r}", root)
    real_root = Path(os.path.realpath(root))
    if not os.path.exists(manifest_file):
        if not contains(root, manifest_file):
            raise _outside(f"path {str(manifest_file)!r}", root)
        raise ApiError(404, "not_published", f"no published model at {str(version_dir)!r}")
    if os.path.islink(version_dir) or os.path.islink(manifest_file):
        raise ApiError(403, "symlink", f"{str(manifest_file)!r} goes through a symlink; refusing it")
    rel = Path(os.path.realpath(version_dir)).relative_to(real_root).parts
    if len(rel) not in (3, 4) or rel[0] == ".axon":
        raise ApiError(400, "bad_path", f"{str(version_dir)!r} is not a version directory (<ns>/<name…>/<version>)")
    spec = ModelSpec(rel[0], "/".join(rel[1:-1]), rel[-1])
    try:
        manifest = load_manifest(manifest_file)
    except AxonError as exc:
        raise ApiError(400, "invalid_manifest", str(exc)) from None
    if (manifest.namespace, manifest.name, manifest.version) != (spec.namespace, spec.name, spec.version):
        raise ApiError(400, "invalid_manifest",
                       f"manifest says {manifest.spec_text!r} but lives at {str(spec)!r}")
    return Located(spec, Path(os.path.realpath(version_dir)), manifest)


def locate_delivered(model_dir: Path, model_id: str | None = None) -> Located:
    """The one model in *model_dir*, as KServe's storage initializer leaves it (``/mnt/models``):
    its ``manifest.yaml`` at the top, and its files beside it (a version directory of a local
    repository, mounted from a PVC) or under ``<content digest>/`` (the version's prefix of an
    s3:// repository, downloaded; other generations' directories are ignored).

    Nothing here is trusted yet: the caller checks the manifest's digest against the pin, and
    every file against the manifest, as for a repository."""
    manifest_file = model_dir / MANIFEST_NAME
    if os.path.islink(model_dir / MANIFEST_NAME):
        raise ApiError(403, "symlink", f"{str(manifest_file)!r} is a symlink; refusing it")
    try:
        manifest = load_manifest(manifest_file)
    except AxonError as exc:
        code = 404 if not os.path.lexists(manifest_file) else 400
        raise ApiError(code, "not_published" if code == 404 else "invalid_manifest", str(exc)) from None
    spec = parse_spec(manifest.spec_text)
    if model_id is not None and model_id != str(spec):
        raise ApiError(404, "model_not_found", f"{str(model_dir)!r} holds {str(spec)!r}, not {model_id!r}")
    model_dir = Path(os.path.realpath(model_dir))  # the operator's path; beneath it nothing is followed
    return Located(spec, _delivered_files(model_dir, manifest.digest), manifest)


def _delivered_files(model_dir: Path, content_digest: str) -> Path:
    """``<model_dir>/<content digest>`` when that is a directory, else *model_dir* (a PVC's version
    directory). Never resolved: the version directory is opened ``O_NOFOLLOW`` where it is checked,
    so a symlink swapped in for it later is refused there, not followed; one here is refused now."""
    files = model_dir / content_digest
    try:
        os.close(os.open(files, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
    except FileNotFoundError:
        return model_dir
    except OSError as exc:
        if exc.errno == errno.ENOTDIR and not os.path.islink(files):
            return model_dir  # a file of that name: the flat layout's business, not a directory of files
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ApiError(403, "symlink", f"{str(files)!r} is a symlink; refusing it") from None
        raise ApiError(403, "unreadable", f"cannot open {str(files)!r}: {exc.strerror}") from None
    return files


def verify_files(root: Path, located: Located, *, already_verified: Collection[str] = (),
                 sha256: bool = False) -> None:
    """Every listed file: a regular file beneath the version directory (no symlink anywhere on the
    way: 403 if not), of its recorded size and xxh3-128, and with *sha256* its sha256 (409 if not).

    Files in *already_verified* (read and hashed in memory by :func:`read_verified_model`) get the
    type and size checks but are not hashed a second time."""
    report = verify_version_dir(located.version_dir, located.manifest, check_sha256=sha256,
                                already_hashed=already_verified, report_unlisted=False)
    if report.ok:
        return
    # A file that is not what it claims to be (a symlink, a directory) is refused as such first.
    problem = next((p for p in report.problems if p.kind == "not-a-file"), report.problems[0])
    spec = str(located.spec)
    if problem.kind == "not-a-file":
        raise _outside(f"file {problem.path!r} of {spec!r}", root)
    if problem.kind == "missing":
        raise ApiError(409, "integrity", f"file {problem.path!r} of {spec!r} is missing")
    if problem.kind == "size":
        raise ApiError(409, "integrity", f"file {problem.path!r} of {spec!r} has {problem.actual} bytes, "
                       f"the manifest says {problem.expected}")
    if problem.kind == "unreadable":
        raise ApiError(409, "integrity", f"file {problem.path!r} of {spec!r} cannot be read ({problem.actual})")
    raise ApiError(409, "integrity", f"file {problem.path!r} of {spec!r} does not match its recorded hash; it was "
                   "changed after publishing (axon verify --published)")


def model_refusal(exc: AxonError, spec: object) -> ApiError:
    """The API error for a model axon's checks refuse (never a 500 for a bad model)."""
    message = f"{str(spec)!r}: {exc.message}"
    if isinstance(exc, ExternalDataOutsideError):
        return ApiError(403, "outside_repository", message)
    if isinstance(exc, IntegrityError):
        return ApiError(409, "integrity", message + " (axon verify --published)")
    if isinstance(exc, UnsupportedOperatorError):
        return ApiError(400, "unsupported_operator", message)
    if isinstance(exc, (InvalidModelError, InvalidManifestError)):
        return ApiError(400, "invalid_model", message)
    return ApiError(500, "unreadable_model", message)


def read_verified_model(located: Located, *, sha256: bool = False) -> VerifiedModel:
    """The entrypoint and every external data file its graph names, read through open_beneath into
    memory and checked there (size, xxh3-128): what we hashed is what loads.

    Every external data reference anywhere in the graph must name a file the manifest lists
    inside the version directory (403 when it leads outside, 400 when it is not listed, 409 when
    the bytes differ); operator domains onnxruntime lacks are refused (400)."""
    try:
        return _read_model(located.version_dir, located.manifest, sha256=sha256)
    except AxonError as exc:
        raise model_refusal(exc, located.spec) from None
