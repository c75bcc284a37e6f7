"""Server settings: defaults < config file (YAML, same keys) < command-line options."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from axon.store.cache_dir import DEFAULT_CACHE_DIR

__all__ = ["PATH_KEYS", "ServerSettings", "check_server_map"]

PATH_KEYS = ("repository", "token_file", "state_dir", "deployment", "model_dir")
# What a deployment's server: map (or --set) may not say: where models come from is the
# deployment's (or the command line's) business, not a tuning knob.
OWNED_KEYS = frozenset({"repository", "store", "deployment", "deployment_doc", "require_models", "model_dir",
                        "model_digest", "model_name", "token_file", "state_dir"})
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a Kubernetes name (RFC 1123 label)


@dataclass(frozen=True)
class ServerSettings:
    repository: Path = Path("/var/lib/mlos/models")  # with *store*: the verified local cache of its versions
    store: str | None = None  # s3://BUCKET/PREFIX: the repository is in an object store
    host: str = "127.0.0.1"
    port: int = 8080
    device: str = "auto"  # auto | cpu | cuda
    max_batch_size: int = 32
    max_request_inputs: int = 2048  # texts in one request; more than max_batch_size are split into batches
    max_queue_delay_ms: float = 0.0
    max_batch_tokens: int = 0  # text: padded tokens per batch (rows x longest); 0 = no budget
    max_queue_size: int = 256
    instances: int = 1
    workers: int = 1  # HTTP worker processes, each with its own sessions and batchers
    precision: str = "fp32"  # fp32 | fp16 (CUDA only: transformer-optimized fp16 graph) | int8 (CPU, gated)
    int8_min_cosine: float = 0.99  # int8 is served only if its outputs keep at least this cosine to fp32's
    fuse_postprocessing: bool = True  # mean pooling inside the graph
    intra_op_threads: int = 0  # 0: this process's share of the cores (all of them, divided among the workers)
    intra_op_spinning: bool = True
    request_timeout_s: float = 30.0
    max_body_bytes: int = 64 << 20
    # Connection limits (protocol.py): a request head must arrive within header_timeout_s and
    # max_header_bytes; a body may pause at most body_timeout_s; an idle keep-alive connection is
    # closed after idle_timeout_s; beyond max_connections a new connection gets an immediate 503.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 5.0
    max_header_bytes: int = 64 << 10
    max_connections: int = 1024
    # None here means "the default", filled in by __post_init__ (state_dir/token, repository/.axon/core),
    # so that readers always see a Path.
    token_file: Path = None  # type: ignore[assignment]  # filled in by __post_init__
    state_dir: Path = None  # type: ignore[assignment]  # filled in by __post_init__
    log_level: str = "info"
    # mlos-deploy.yaml: the served models (pinned) come from it, not from admin calls; its
    # repository, cache_dir and server settings apply beneath the command line's.
    deployment: Path | None = None
    deployment_doc: str | None = None  # the deployment itself (a Ray Serve replica: not followed, rolled out)
    require_models: bool = False  # start only once every served model loaded (the --model-dir runtime)
    # One model delivered into a directory (KServe's storage initializer: /mnt/models), served only
    # if its manifest is the pinned one (model_digest, sha256:), under model_name too (the
    # InferenceService's name, as KServe's v2 clients address it). mlos_core.model_dir.
    model_dir: Path | None = None
    model_digest: str | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.state_dir is None:
            # A delivered model directory is read-only and holds nothing but the model.
            default = _user_state_dir() if self.model_dir is not None else self.repository / ".axon" / "core"
            object.__setattr__(self, "state_dir", default)
        if self.token_file is None:
            object.__setattr__(self, "token_file", self.state_dir / "token")
        if self.store is not None:
            from axon.store.s3 import S3Location

            S3Location.parse(self.store)  # a UsageError (a ValueError) names what is wrong with it
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision must be fp32, fp16 or int8, not {self.precision!r}")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("precision fp16 needs --device cuda (onnxruntime's CPU kernels are fp32)")
        if self.precision == "int8" and self.device != "cpu":
            raise ValueError("precision int8 needs --device cpu (dynamic int8 is a CPU recipe; on CUDA use fp16)")
        cos = self.int8_min_cosine
        if isinstance(cos, bool) or not isinstance(cos, int | float) or not 0 < cos <= 1:
            raise ValueError(f"int8_min_cosine must be a number in (0, 1], not {cos!r}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        for name in ("max_batch_tokens", "intra_op_threads", "max_queue_delay_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if self.model_dir is not None:
            from axon.store.pin import is_manifest_pin, is_pin

            if self.deployment is not None or self.store is not None:
                raise ValueError("--model-dir serves the one model in that directory: not with --deployment or an "
                                 "s3:// --repository")
            if not (is_pin(self.model_digest) and is_manifest_pin(self.model_digest)):
                raise ValueError(f"--model-dir needs --digest sha256:<64 hex> (the manifest digest the model is "
                                 f"pinned to: axon published SPEC --json), not {self.model_digest!r}")
            if self.model_name is not None and not _DNS_LABEL.fullmatch(self.model_name):
                raise ValueError(f"--model-name must be a DNS-1123 label (lowercase letters, digits and '-', at most "
                                 f"63 characters: the InferenceService's name), not {self.model_name!r}")
        elif self.model_digest is not None or self.model_name is not None:
            raise ValueError("--digest and --model-name go with --model-dir")
        for name in ("max_body_bytes", "max_header_bytes", "max_connections", "max_request_inputs", "max_batch_size",
                     "max_queue_size", "instances", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")

    @property
    def session_threads(self) -> int:
        """onnxruntime's intra-op threads per session: as set, else the cores this process may run
        on divided among the workers (N workers each with every core oversubscribe the machine:
        measured 0.5x of one worker with two on two cores)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, cores // self.workers)

    @classmethod
    def load(cls, config_file: Path | None = None, settings: Mapping[str, Any] | None = None,
             **overrides: Any) -> ServerSettings:
        """Defaults < *config_file* < *settings* (``--set KEY=VALUE``) < *overrides* (the options)."""
        values: dict[str, Any] = {}
        if config_file is not None:
            data = yaml.safe_load(Path(config_file).read_text()) or {}
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown key(s) in {config_file}: {', '.join(unknown)}")
            values.update(data)
        if settings:
            check_server_map(settings, "--set")
            values.update(settings)
        deployment = overrides.pop("deployment", None) or values.pop("deployment", None)
        if deployment is not None:
            values.update(_from_deployment(Path(deployment), overrides))
        values.update({k: v for k, v in overrides.items() if v is not None})
        cache_dir = values.pop("cache_dir", None)
        if str(values.get("repository", "")).startswith("s3://"):
            values["store"] = str(values["repository"])
            values["repository"] = cache_dir or DEFAULT_CACHE_DIR
        elif cache_dir is not None:
            raise ValueError("--cache-dir goes with an s3:// --repository (the local copy of its versions)")
        for key in PATH_KEYS:
            if values.get(key) is not None:
                values[key] = Path(os.path.expanduser(str(values[key])))
        if values.get("model_dir") is not None:
            if "repository" in overrides and overrides["repository"] is not None:
                raise ValueError("--model-dir serves the one model in that directory: not with --repository")
            values["repository"] = values["model_dir"]
        return cls(**values)

    def with_(self, **changes: Any) -> ServerSettings:
        return replace(self, **changes)

    @property
    def token_group_source(self) -> Path | None:
        """Whose group a new admin token file gets: the repository's (root and the publish group
        read it), or none for a delivered model directory (whoever delivered it is not trusted)."""
        return None if self.model_dir is not None else self.repository


def _user_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mlos-core"


def check_server_map(server: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Server settings given as a map (a deployment's server:, --set): known keys, each of its
    setting's type (ranges are checked when the settings are made)."""
    known = {f.name: f for f in fields(ServerSettings)}
    unknown = sorted(set(server) - set(known))
    if unknown:
        raise ValueError(f"unknown server setting(s) in {where}: {', '.join(unknown)}")
    owned = sorted(set(server) & OWNED_KEYS)
    if owned:
        raise ValueError(f"{where} may not set {', '.join(owned)} (where the models come from is given elsewhere)")
    for key, value in server.items():
        default = known[key].default
        kind = type(default) if isinstance(default, bool | int | float | str) else str
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, kind) or (kind is float and isinstance(value, int))) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"{prefix}{key} in {where} must be {kind.__name__} (like {default!r}), not {value!r}")


def _from_deployment(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings a deployment file gives: its repository (and cache_dir) and its server map."""
    from axon.store.deployment import load_deployment

    deployment = load_deployment(path)  # an InvalidDeploymentError is a ValueError: one line, exit 2
    for owned, value in (("repository", deployment.repository), ("cache_dir", deployment.cache_dir)):
        given = overrides.get(owned)
        if given is not None and str(given) != str(value):
            raise ValueError(f"--{owned.replace('_', '-')} {given} differs from the deployment file's {owned} "
                             f"({value}); the deployment file {str(path)!r} says where its models are")
    check_server_map(deployment.server, repr(str(path)), prefix="server.")
    values: dict[str, Any] = {**deployment.server, "repository": deployment.repository, "deployment": path}
    if deployment.cache_dir is not None:
        values["cache_dir"] = deployment.cache_dir
    return values
