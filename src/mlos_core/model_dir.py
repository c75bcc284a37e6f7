"""Serving one model from a directory something else delivered (``mlos-core serve --model-dir``).

This is MLOS Core as a KServe serving runtime: KServe's storage initializer copies the
InferenceService's ``storageUri`` into ``/mnt/models`` (or mounts a PVC there) and verifies
nothing. The pin given with ``--digest`` (the manifest digest, ``sha256:``) is the trust anchor:

1. before the port opens, the delivered ``manifest.yaml`` must hash to the pin (exit 3, one line,
   if not: a republish, a wrong storageUri, a tampered copy);
2. the server then serves that one model as a deployment of one, pinned: every file is
   sha256-checked where it is read, the graph from the bytes that were hashed, and the server
   does not start (so never becomes ready) unless the model loaded;
3. admin register/unregister calls are refused (the InferenceService says what is served).

The directory is read where it lies (no copy): it may be read-only, as KServe mounts it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from axon.errors import IntegrityError, UsageError
from axon.store.deployment import API_VERSION, KIND, dump_deployment, parse_deployment
from axon.store.layout import MANIFEST_NAME
from axon.store.manifest import load_manifest
from axon.store.spec import ModelSpec, parse_spec
from mlos_core.settings import ServerSettings

__all__ = ["prepare"]


def prepare(settings: ServerSettings) -> tuple[ServerSettings, ModelSpec]:
    """The settings that serve *settings.model_dir*'s model, once its manifest is the pinned one.

    Raises UsageError (exit 2) for a directory without a manifest, and IntegrityError (exit 3)
    for a manifest that is not the pinned one."""
    assert settings.model_dir is not None and settings.model_digest is not None
    model_dir = Path(os.path.realpath(settings.model_dir))  # the operator's path; beneath it nothing is followed
    manifest_file = model_dir / MANIFEST_NAME
    if not os.path.lexists(manifest_file):
        raise UsageError(f"{str(settings.model_dir)!r} holds no {MANIFEST_NAME}: it is not a published version.",
                         hint="point the storageUri (or --model-dir) at a version: <repository>/<ns>/<name>/<version>/")
    manifest = load_manifest(manifest_file)  # an InvalidManifestError names what is wrong (exit 2)
    if manifest.manifest_digest != settings.model_digest:
        raise IntegrityError(
            f"{manifest.spec_text!r} in {str(settings.model_dir)!r} has manifest digest {manifest.manifest_digest}, "
            f"not the pinned {settings.model_digest}: it is another publish (republished, a wrong storageUri, or "
            "changed on the way); nothing was served.",
            hint="pin the digest you mean to serve (axon deploy SPEC --emit kserve) or point at that publish",
            expected=settings.model_digest, actual=manifest.manifest_digest)
    spec = parse_spec(manifest.spec_text)
    doc = {"apiVersion": API_VERSION, "kind": KIND, "repository": str(model_dir),
           "models": [{"model": str(spec), "digest": settings.model_digest}]}
    document = dump_deployment(parse_deployment(doc, f"(the model in {str(model_dir)!r})"))
    return replace(settings, model_dir=model_dir, repository=model_dir, deployment_doc=document,
                   require_models=True), spec
