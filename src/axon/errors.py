"""Every error axon raises on purpose.

Each class carries an ``exit_code`` (see ``axon.cli._exit_codes``) and an optional ``hint``: the
fix, as a runnable command when there is one. Messages follow one shape: what failed, the thing
named in quotes, why; the hint goes on the next line.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
INTEGRITY = 3
PERMISSION = 4


class AxonError(Exception):
    """Base of every deliberate axon failure (exit 1 unless a subclass says otherwise)."""

    exit_code = FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


# --- bad input (exit 2) ------------------------------------------------------------------


class UsageError(AxonError, ValueError):
    """The user asked for something malformed: a bad spec, flag combination or config value."""

    exit_code = USAGE


class InvalidSpecError(UsageError):
    """A model spec does not match NAMESPACE/NAME[@VERSION]."""

    def __init__(self, spec: str, why: str) -> None:
        super().__init__(
            f"Invalid model spec {spec!r}: {why}.",
            hint="A spec looks like NAMESPACE/NAME[@VERSION], e.g. acme/ranker@2.1.0 or hf/org/repo@main",
        )
        self.spec = spec


class ConfigError(UsageError):
    """config.yaml (or an environment override) holds an unknown key or a bad value."""


class InvalidModelError(UsageError):
    """A model file is not a readable ONNX model, or a package has no ONNX model at all."""


class InvalidManifestError(UsageError):
    """A manifest is missing fields, has bad values or lists unsafe paths."""


# --- not found / operational (exit 1) ------------------------------------------------------


class NotInstalledError(AxonError, LookupError):
    """The spec is not installed in the dev cache."""

    def __init__(self, spec: str) -> None:
        super().__init__(
            f"Model {spec!r} is not in the dev cache.", hint=f"Install it with: axon install {spec}"
        )
        self.spec = spec


class NotPublishedError(AxonError, LookupError):
    """The version is not in the production repository."""


class AlreadyInstalledError(AxonError):
    """The version is already installed and --force was not given."""


class SourceError(AxonError):
    """A download source failed: unknown repo, HTTP error, network down."""


class BusyError(AxonError):
    """Another axon process holds the lock for this model version."""


class StoreError(AxonError):
    """An object store (S3 API) failed or refused: unreachable, no credentials, no bucket, or a
    store that does not keep the promises the repository relies on (conditional writes)."""


class ConflictError(AxonError):
    """A conditional write lost: someone else created or replaced the object first."""


class NotACacheDirError(UsageError):
    """A directory given as a serving host's cache that is not one (a repository, other files)."""


class CacheConflictError(AxonError):
    """A version that cannot sit in the cache next to one already there (``ns/a@b`` is the
    directory of ``ns/a/b@c``)."""


class DiskFullError(AxonError, OSError):
    """The disk (or a quota) filled while writing."""


# --- integrity (exit 3) --------------------------------------------------------------------


class IntegrityError(AxonError):
    """A file's content does not match the digest it must have."""

    exit_code = INTEGRITY

    def __init__(self, message: str, *, path: str = "", expected: str = "", actual: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.expected = expected
        self.actual = actual


# --- permission (exit 4) -------------------------------------------------------------------


class PermissionDeniedError(AxonError, PermissionError):
    """The caller may not do this (not root, not in the publish group, unwritable directory)."""

    exit_code = PERMISSION
