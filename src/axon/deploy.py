"""``axon deploy`` / ``undeploy`` / ``deployments``: edit the deployment file a fleet serves.

A model goes into the file only as a verified, published copy pinned to its manifest digest:
the published copy is re-hashed (``verify --published``), and its manifest digest is read
before and after, so a republish in between is a conflict, never a pin on bytes nobody
checked. The file is replaced atomically; every server started with ``--deployment`` follows
it (loading what is added, unloading what is removed, refusing what does not match its pin).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from axon.errors import AxonError, ConflictError, NotPublishedError, UsageError
from axon.publish import published, verify_published
from axon.settings import Settings
from axon.store.deployment import (
    Autoscale,
    Deployment,
    InvalidDeploymentError,
    load_deployment,
    parse_deployment,
    write_deployment,
)
from axon.store.spec import ModelSpec

__all__ = ["DEFAULT_FILE", "KServeOptions", "Scaling", "deploy", "deployment_rows", "parse_autoscale", "undeploy"]

DEFAULT_FILE = Path("mlos-deploy.yaml")


class Scaling:
    """What ``--replicas``, ``--autoscale`` and ``--gpus`` ask for (None: keep the file's)."""

    def __init__(self, replicas: int | None = None, autoscale: Autoscale | None = None,
                 gpus: float | None = None) -> None:
        if replicas is not None and autoscale is not None:
            raise UsageError("Give --replicas or --autoscale, not both.")
        if replicas is not None and replicas < 1:
            raise UsageError(f"--replicas must be at least 1, not {replicas}.")
        if gpus is not None and not (gpus >= 0 and math.isfinite(gpus)):
            raise UsageError(f"--gpus must be a number of GPUs per replica (0.5 shares one), not {gpus}.")
        self.replicas, self.autoscale, self.gpus = replicas, autoscale, gpus

    def apply(self, deployment: Deployment) -> Deployment:
        if self.replicas is not None:
            deployment = replace(deployment, replicas=self.replicas, autoscale=None)
        if self.autoscale is not None:
            deployment = replace(deployment, replicas=1, autoscale=self.autoscale)
        if self.gpus is not None:
            deployment = replace(deployment, gpus=float(self.gpus))
        return deployment


@dataclass(frozen=True)
class KServeOptions:
    """``--emit kserve``: where the manifests go and what they say beyond the deployment file."""

    out_dir: Path
    image: str | None = None
    repository_uri: str | None = None
    name: str | None = None
    service_account: str | None = None

    def emit(self, spec: ModelSpec, digest: str, deployment: Deployment) -> list[Path]:
        from axon.kserve_manifests import DEFAULT_IMAGE, emit_kserve

        return emit_kserve(self.out_dir, spec, digest, deployment, image=self.image or DEFAULT_IMAGE,
                           repository_uri=self.repository_uri, name=self.name, service_account=self.service_account)

    def check(self, spec: ModelSpec, deployment: Deployment) -> None:
        """Refuse what KServe cannot express before anything is verified or written."""
        from axon.kserve_manifests import inference_service

        inference_service(spec, "sha256:" + "0" * 64, deployment, repository_uri=self.repository_uri,
                          name=self.name, service_account=self.service_account)


def parse_autoscale(text: str) -> Autoscale:
    """``MIN:MAX`` or ``MIN:MAX:TARGET`` (ongoing requests per replica)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        low, high = int(parts[0]), int(parts[1])
        target = float(parts[2]) if len(parts) == 3 else 2.0
    except ValueError:
        raise UsageError(f"--autoscale {text!r} is not MIN:MAX[:TARGET] (e.g. 1:4 or 1:4:8).") from None
    if low < 0 or high < max(low, 1) or not (target > 0 and math.isfinite(target)):
        raise UsageError(f"--autoscale {text!r}: need 0 <= MIN <= MAX, MAX >= 1 and TARGET > 0.")
    return Autoscale(low, high, target)


def _repository_of(settings: Settings) -> str:
    return str(settings.publish_store) if settings.publish_store is not None else str(settings.publish_dir)


def _open(file: Path, settings: Settings, *, create: bool) -> Deployment:
    """The deployment in *file* (a new one for this repository when there is none and *create*)."""
    if not file.exists():
        if not create:
            raise InvalidDeploymentError(f"No deployment file at {str(file)!r}.",
                                         hint="Create one with: axon deploy SPEC --file PATH")
        return Deployment(_repository_of(settings))
    deployment = load_deployment(file)
    if deployment.repository != _repository_of(settings):
        raise UsageError(f"The deployment file {str(file)!r} serves {deployment.repository}, not this publish_dir "
                         f"({_repository_of(settings)}).",
                         hint="Run with the publish_dir it names (AXON_PUBLISH_DIR), or use another --file.")
    return deployment


def _manifest_digest(settings: Settings, spec: ModelSpec) -> str:
    row = next((r for r in published(settings) if r["spec"] == str(spec)), None)
    if row is None or not row.get("manifest_digest"):
        raise NotPublishedError(f"{str(spec)!r} is not published in {_repository_of(settings)}; only published "
                                "versions are deployed.", hint=f"Publish it first: axon publish {spec}")
    return str(row["manifest_digest"])


def deploy(spec: ModelSpec, settings: Settings, file: Path = DEFAULT_FILE, scaling: Scaling | None = None,
           *, progress: Callable[[int], object] | None = None, kserve: KServeOptions | None = None) -> dict[str, Any]:
    """Verify the published *spec*, pin its manifest digest in *file* (created if missing), apply
    *scaling*; with *kserve*, also write its KServe manifests. Returns what changed.

    Raises:
        NotPublishedError, IntegrityError (exit 3: the published copy does not verify),
        ConflictError (republished while it was verified), InvalidDeploymentError, UsageError.
    """
    current = _open(file, settings, create=True)  # a file for another repository is refused before any work
    if kserve is not None:
        kserve.check(spec, (scaling or Scaling()).apply(current))
    digest = _manifest_digest(settings, spec)
    verify_published(spec, settings, progress=progress).raise_for_problems()
    if _manifest_digest(settings, spec) != digest:
        raise ConflictError(f"{str(spec)!r} was republished while it was being verified; nothing was deployed.",
                            hint=f"Run it again: axon deploy {spec}")
    with _locked(file):  # read again under the lock: a deploy or undeploy meanwhile is kept, not overwritten
        deployment = _open(file, settings, create=True)
        before = deployment.model(spec)
        updated = (scaling or Scaling()).apply(deployment.with_model(spec, digest))
        parse_deployment(updated.to_dict(), repr(str(file)))  # only what every server can read back is written
        write_deployment(file, updated)
    status = "unchanged" if updated == deployment else ("updated" if before is not None else "deployed")
    result = {"spec": str(spec), "status": status, "digest": digest,
              "digest_old": before.digest if before is not None else None, "file": str(file),
              **_scaling_of(updated)}
    if kserve is not None:
        result["manifests"] = [str(p) for p in kserve.emit(spec, digest, updated)]
    return result


def undeploy(spec: ModelSpec, settings: Settings, file: Path = DEFAULT_FILE) -> dict[str, Any]:
    with _locked(file):
        deployment = _open(file, settings, create=False)
        found = deployment.model(spec)
        if found is None:
            raise AxonError(f"{str(spec)!r} is not in the deployment file {str(file)!r}.",
                            hint=f"See what is deployed with: axon deployments --file {file}")
        write_deployment(file, deployment.without_model(spec))
    return {"spec": str(spec), "status": "undeployed", "digest": found.digest, "file": str(file)}


@contextlib.contextmanager
def _locked(file: Path) -> Iterator[None]:
    """One writer of *file* at a time (flock on ``<file>.lock``, released if the process dies)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file.with_name(file.name + ".lock"), os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def deployment_rows(file: Path = DEFAULT_FILE) -> dict[str, Any]:
    """What *file* deploys: its repository, scaling and models (spec and pinned digest)."""
    deployment = load_deployment(file)
    return {"file": str(file), "repository": deployment.repository, **_scaling_of(deployment),
            "models": [{"spec": str(m.spec), "digest": m.digest} for m in deployment.models]}


def _scaling_of(deployment: Deployment) -> dict[str, Any]:
    a = deployment.autoscale
    return {"replicas": deployment.replicas if a is None else None,
            "autoscale": None if a is None else {"min": a.min_replicas, "max": a.max_replicas,
                                                 "target_ongoing_requests": a.target_ongoing_requests},
            "gpus": deployment.gpus, "max_replicas_per_node": deployment.max_replicas_per_node}
