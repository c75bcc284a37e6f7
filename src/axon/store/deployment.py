"""The deployment file (``mlos-deploy.yaml``): which published versions a fleet serves, and how.

The set of served models comes from this file, not from admin calls to one replica: every
replica (a Ray Serve replica, a KServe pod, a bare ``mlos-core serve --deployment``) registers
exactly these models, each pinned to its digest, and reports itself not ready while one is
missing, failed or published with another digest.

::

    apiVersion: axon.mlos.io/v1
    kind: Deployment
    repository: /var/lib/mlos/models      # or s3://BUCKET/PREFIX (then cache_dir, on each host)
    models:
      - model: acme/ranker@2.1.0
        digest: sha256:9b1f…              # the manifest digest (axon published --json)
    replicas: 2                           # or autoscale: {min: 1, max: 4, target_ongoing_requests: 2}
    gpus: 0.5                             # per replica; fractions share a GPU
    max_replicas_per_node: 1
    server: {max_batch_size: 32}          # mlos-core serve settings (its option names, with _)
    ray: {health_check_period_s: 10, health_check_timeout_s: 30, proxy: python}

Every replica serves every model of the file (one replica set); scaling is the file's.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from axon.errors import InvalidSpecError, UsageError
from axon.store.atomic import atomic_write_text
from axon.store.pin import is_manifest_pin, is_pin
from axon.store.spec import ModelSpec, parse_spec

__all__ = ["API_VERSION", "KIND", "Autoscale", "DeployedModel", "Deployment", "InvalidDeploymentError", "RaySettings",
           "dump_deployment", "load_deployment", "parse_deployment", "write_deployment"]

API_VERSION = "axon.mlos.io/v1"
KIND = "Deployment"
PROXIES = ("python", "haproxy")
DEFAULT_REPOSITORY = "/var/lib/mlos/models"
_SERVER_VALUE = (str, int, float, bool)


class InvalidDeploymentError(UsageError):
    """The deployment file is not one: it names what is wrong, and where."""


@dataclass(frozen=True, slots=True)
class Autoscale:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 2.0


@dataclass(frozen=True, slots=True)
class RaySettings:
    """The Ray Serve settings that matter, with the defaults we ship (docs/operations.md)."""

    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    proxy: str = "python"  # python (Ray's own proxy) | haproxy (RAY_SERVE_ENABLE_HA_PROXY: haproxy on every node)
    max_ongoing_requests: int = 64  # per replica, before Ray queues: MLOS Core batches what it is given


@dataclass(frozen=True, slots=True)
class DeployedModel:
    spec: ModelSpec
    digest: str  # the manifest digest (sha256:…), as `axon deploy` writes it


@dataclass(frozen=True, slots=True)
class Deployment:
    repository: str = DEFAULT_REPOSITORY
    cache_dir: str | None = None
    models: tuple[DeployedModel, ...] = ()
    replicas: int = 1
    autoscale: Autoscale | None = None
    gpus: float = 0.0
    max_replicas_per_node: int | None = None
    server: Mapping[str, Any] = field(default_factory=dict)
    ray: RaySettings = field(default_factory=RaySettings)

    def model(self, spec: ModelSpec) -> DeployedModel | None:
        return next((m for m in self.models if m.spec == spec), None)

    def with_model(self, spec: ModelSpec, digest: str) -> Deployment:
        """This deployment serving *spec* at *digest* (replacing its earlier pin)."""
        kept = tuple(m for m in self.models if m.spec != spec)
        return replace(self, models=tuple(sorted((*kept, DeployedModel(spec, digest)), key=lambda m: str(m.spec))))

    def without_model(self, spec: ModelSpec) -> Deployment:
        return replace(self, models=tuple(m for m in self.models if m.spec != spec))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "repository": self.repository}
        if self.cache_dir is not None:
            doc["cache_dir"] = self.cache_dir
        doc["models"] = [{"model": str(m.spec), "digest": m.digest} for m in self.models]
        if self.autoscale is not None:
            a = self.autoscale
            doc["autoscale"] = {"min": a.min_replicas, "max": a.max_replicas,
                                "target_ongoing_requests": a.target_ongoing_requests}
        else:
            doc["replicas"] = self.replicas
        if self.gpus:
            doc["gpus"] = self.gpus
        if self.max_replicas_per_node is not None:
            doc["max_replicas_per_node"] = self.max_replicas_per_node
        if self.server:
            doc["server"] = dict(self.server)
        if self.ray != RaySettings():
            doc["ray"] = {k: getattr(self.ray, k) for k in RaySettings.__slots__}
        return doc


def _fail(where: str, why: str) -> InvalidDeploymentError:
    return InvalidDeploymentError(f"Invalid deployment file {where}: {why}.",
                                  hint="docs/operations.md (\"Fleets\") describes the file; axon deploy writes it.")


def _keys(doc: Mapping[str, Any], allowed: set[str], where: str, at: str) -> None:
    for key in doc:
        if key not in allowed:
            raise _fail(where, f"unknown key {at}{key!r} (known: {', '.join(sorted(allowed))})")


def _number(value: Any, where: str, at: str, *, integer: bool = False, low: float = 0, above: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)) or (
            value <= low if above else value < low):
        kind = "an integer" if integer else "a number"
        raise _fail(where, f"{at} must be {kind} {'>' if above else '>='} {low:g}, not {value!r}")
    return value


def parse_deployment(doc: Any, where: str = "") -> Deployment:
    """Validate a parsed deployment document (InvalidDeploymentError naming the first problem)."""
    if not isinstance(doc, Mapping):
        raise _fail(where, "the document is not a mapping")
    _keys(doc, {"apiVersion", "kind", "repository", "cache_dir", "models", "replicas", "autoscale", "gpus",
                "max_replicas_per_node", "server", "ray"}, where, "")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise _fail(where, f"apiVersion must be {API_VERSION!r} and kind {KIND!r}")
    repository = doc.get("repository", DEFAULT_REPOSITORY)
    if not isinstance(repository, str) or not repository:
        raise _fail(where, "repository must be a directory or an s3:// URL")
    cache_dir = doc.get("cache_dir")
    if cache_dir is not None and (not isinstance(cache_dir, str) or not repository.startswith("s3://")):
        raise _fail(where, "cache_dir is a directory, and goes with an s3:// repository")
    models = doc.get("models", [])
    if not isinstance(models, list):
        raise _fail(where, "models must be a list of {model, digest}")
    deployed: list[DeployedModel] = []
    for i, item in enumerate(models):
        at = f"models[{i}]"
        if not isinstance(item, Mapping):
            raise _fail(where, f"{at} must be a mapping with 'model' and 'digest'")
        _keys(item, {"model", "digest"}, where, f"{at}.")
        text = item.get("model")
        if not isinstance(text, str) or "@" not in text:
            raise _fail(where, f"{at}.model must be NS/NAME@VERSION")
        try:
            spec = parse_spec(text)
        except InvalidSpecError as exc:
            raise _fail(where, f"{at}.model: {exc.message.rstrip('.')}") from None
        if not (is_pin(item.get("digest")) and is_manifest_pin(item.get("digest"))):
            raise _fail(where, f"{at}.digest must be a manifest digest, sha256:<64 hex digits> (every model is "
                        "pinned, every byte sha256-checked; axon deploy writes it)")
        if any(m.spec == spec for m in deployed):
            raise _fail(where, f"{at}: {spec} is listed twice")
        deployed.append(DeployedModel(spec, item["digest"]))
    if "replicas" in doc and "autoscale" in doc:
        raise _fail(where, "give replicas or autoscale, not both")
    replicas = _number(doc.get("replicas", 1), where, "replicas", integer=True, low=1)
    autoscale = None
    if "autoscale" in doc:
        a = doc["autoscale"]
        if not isinstance(a, Mapping):
            raise _fail(where, "autoscale must be {min, max, target_ongoing_requests}")
        _keys(a, {"min", "max", "target_ongoing_requests"}, where, "autoscale.")
        low = _number(a.get("min", 1), where, "autoscale.min", integer=True, low=0)
        high = _number(a.get("max"), where, "autoscale.max", integer=True, low=1)
        if high < low:
            raise _fail(where, f"autoscale.max ({high}) is below autoscale.min ({low})")
        target = _number(a.get("target_ongoing_requests", 2.0), where, "autoscale.target_ongoing_requests",
                         low=0, above=True)
        autoscale = Autoscale(low, high, float(target))
    gpus = _number(doc.get("gpus", 0.0), where, "gpus", low=0)
    per_node = doc.get("max_replicas_per_node")
    if per_node is not None:
        _number(per_node, where, "max_replicas_per_node", integer=True, low=1)
    server = doc.get("server", {})
    if not isinstance(server, Mapping) or not all(
            isinstance(k, str) and isinstance(v, _SERVER_VALUE) and not (isinstance(v, float) and not math.isfinite(v))
            for k, v in server.items()):
        raise _fail(where, "server must map mlos-core serve setting names to plain values")
    for owned in ("repository", "cache_dir", "store", "workers", "host", "port", "deployment", "deployment_doc",
                  "require_models", "token_file", "state_dir", "log_level", "model_dir", "model_digest", "model_name"):
        if owned in server:
            raise _fail(where, f"server.{owned} is set by the deployment (or the engine), not here")
    ray = doc.get("ray", {})
    if not isinstance(ray, Mapping):
        raise _fail(where, "ray must be a mapping")
    _keys(ray, set(RaySettings.__slots__), where, "ray.")
    defaults = RaySettings()
    proxy = ray.get("proxy", defaults.proxy)
    if proxy not in PROXIES:
        raise _fail(where, f"ray.proxy must be one of {', '.join(PROXIES)}, not {proxy!r}")
    ray_settings = RaySettings(
        float(_number(ray.get("health_check_period_s", defaults.health_check_period_s), where,
                      "ray.health_check_period_s", low=0, above=True)),
        float(_number(ray.get("health_check_timeout_s", defaults.health_check_timeout_s), where,
                      "ray.health_check_timeout_s", low=0, above=True)),
        proxy,
        _number(ray.get("max_ongoing_requests", defaults.max_ongoing_requests), where, "ray.max_ongoing_requests",
                integer=True, low=1))
    return Deployment(repository, cache_dir, tuple(sorted(deployed, key=lambda m: str(m.spec))), replicas, autoscale,
                      float(gpus), per_node, dict(server), ray_settings)


def load_deployment(path: str | Path) -> Deployment:
    """Read and validate *path* (InvalidDeploymentError: not there, not YAML, or not valid)."""
    where = repr(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidDeploymentError(f"No deployment file at {where}.",
                                     hint="Create one with: axon deploy SPEC --file PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidDeploymentError(f"Cannot read the deployment file {where}: {exc}.") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise _fail(where, f"not valid YAML{at}") from None
    return parse_deployment(doc, where)


def dump_deployment(deployment: Deployment) -> str:
    return yaml.safe_dump(deployment.to_dict(), sort_keys=False)


def write_deployment(path: str | Path, deployment: Deployment) -> None:
    """Write the file atomically (temp file, fsync, rename): a replica never reads half of one."""
    atomic_write_text(Path(path), dump_deployment(deployment), mode=0o644)
