"""Pick the source for a spec: the Hub for ``hf/…``, else ``--from PATH|URL``."""

from __future__ import annotations

from pathlib import Path

from axon.errors import UsageError
from axon.settings import Settings
from axon.sources.base import FetchResult, Source
from axon.store.blobs import BlobStore
from axon.store.spec import DEFAULT_VERSION, ModelSpec

__all__ = ["FetchResult", "Source", "hub_revision", "select_source"]


def hub_revision(spec: ModelSpec, revision: str | None) -> str:
    if revision:
        return revision
    return "main" if spec.version == DEFAULT_VERSION else spec.version


def select_source(spec: ModelSpec, settings: Settings, downloads_dir: Path, *, from_: str | None = None,
                  revision: str | None = None, sha256: str | None = None,
                  entrypoint: str | None = None, export: bool = False, blobs: BlobStore | None = None) -> Source:
    """Build the Source that can fetch *spec*; with *blobs*, files whose digest is known before
    the download (the Hub's metadata, ``--sha256``) and already stored are placed, not fetched.

    Raises:
        UsageError: when no source applies or options conflict.
    """
    if from_:
        if revision:
            raise UsageError("--revision only applies to Hub installs (hf/ORG/REPO), not with --from.")
        if from_.startswith(("http://", "https://")):
            from axon.sources.url import UrlSource

            if entrypoint:
                raise UsageError("--entrypoint does not apply to a URL: the URL names the one .onnx file.")
            if export:
                raise UsageError("--export applies to Hub repos and local directories, not to a URL.")
            return UrlSource(from_, downloads_dir, sha256=sha256, blobs=blobs)
        if "://" in from_:
            raise UsageError(f"Unsupported --from {from_!r}: use a local path or an http(s):// URL.")
        if sha256:
            raise UsageError("--sha256 applies to URL downloads; local files are hashed as they are copied.")
        from axon.sources.local import LocalSource

        return LocalSource(Path(from_))
    if sha256:
        raise UsageError("--sha256 applies to --from URL downloads only.")
    if spec.namespace == "hf":
        from axon.sources.hub import HubSource

        return HubSource(spec.name, hub_revision(spec, revision), downloads_dir,
                         endpoint=settings.hf_endpoint, token=settings.hf_token, entrypoint=entrypoint,
                         export=export, blobs=blobs)
    raise UsageError(
        f"No source for {str(spec)!r}: only hf/ORG/REPO specs download by name.",
        hint=f"Give one with: axon install {spec} --from ./model-dir (or --from https://…/model.onnx)",
    )
