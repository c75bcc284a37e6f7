"""``axon update``: install an installed version again from the source its manifest records."""

from __future__ import annotations

from axon.cache import get_installed
from axon.install import InstallResult, install
from axon.reporting import Reporter
from axon.settings import Settings
from axon.store.spec import ModelSpec

__all__ = ["update"]


def update(spec: ModelSpec, settings: Settings, *, reporter: Reporter | None = None) -> InstallResult:
    """Fetch *spec*'s recorded source again and replace the installed copy if the content changed.

    A Hub install follows its recorded revision (a branch moves on to its newest commit); a URL or
    local install re-reads its recorded location; an exported one is exported again from the new
    checkpoint. Identical content leaves the installed copy untouched (status ``unchanged``).

    Raises:
        NotInstalledError; whatever :func:`axon.install.install` raises.
    """
    current = get_installed(settings.cache_dir, spec)
    src = current.manifest.source
    kind = src.get("type")
    from_ = None
    revision = None
    if kind == "url":
        from_ = src.get("url")
    elif kind == "local":
        from_ = src.get("path")
    elif kind == "hf":
        revision = src.get("revision")
    exported = "export" in src  # made by --export: made again from the new checkpoint
    # A URL names its one file itself; an export makes its own model.onnx.
    entrypoint = None if exported or kind == "url" else current.manifest.entrypoint
    return install(spec, settings, from_=from_, revision=revision, entrypoint=entrypoint, export=exported,
                   only_if_changed=True, reporter=reporter)
