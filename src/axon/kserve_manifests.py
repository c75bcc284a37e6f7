"""``axon deploy SPEC --emit kserve``: MLOS Core as a KServe serving runtime.

Two manifests, checked in tests against KServe's own CRD schemas (v0.20):

* a ``ClusterServingRuntime`` (``mlos-core``) running the image the repository's ``Dockerfile``
  builds, speaking the v2 protocol: ``mlos-core serve --model-dir /mnt/models`` (where KServe's
  storage initializer leaves the model), ready on ``/v2/health/ready`` only once the model is
  verified and loaded;
* an ``InferenceService`` for one model: its ``storageUri`` (the version in the repository as
  the cluster reaches it), its pin (``--digest sha256:…``: KServe verifies nothing, the runtime
  refuses any other publish), and the deployment file's scaling and server settings.

Scaling maps onto KServe's fields: ``replicas`` to min = max replicas, ``autoscale`` to
``minReplicas``/``maxReplicas`` with ``scaleMetric: concurrency`` and ``scaleTarget`` (its
target of ongoing requests, rounded up), ``gpus`` to a whole-GPU ``nvidia.com/gpu`` limit,
``max_replicas_per_node: 1`` to a required pod anti-affinity per node.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from axon import __version__
from axon.errors import UsageError
from axon.store.atomic import atomic_write_text
from axon.store.deployment import Deployment
from axon.store.spec import ModelSpec

__all__ = ["CONTAINER_PORT", "MODEL_DIR", "MODEL_FORMAT", "RUNTIME_NAME", "emit_kserve", "inference_service",
           "isvc_name", "runtime_manifest", "storage_uri"]

RUNTIME_NAME = "mlos-core"
MODEL_FORMAT = "mlos"  # a format of our own: KServe never picks this runtime for a plain ONNX file, nor another for us
CONTAINER_PORT = 8080
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer leaves (or mounts) the model
STATE_DIR = "/var/lib/mlos-core"  # the runtime's own state (its admin token): an emptyDir
DEFAULT_IMAGE = f"mlos-core:{__version__}"  # docker build -t mlos-core:VERSION . (the repository's Dockerfile)
MAX_NAME = 45  # KServe's Knative path derives longer names from it (<name>-predictor-…, 63 at most)
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def isvc_name(spec: ModelSpec) -> str:
    """A DNS-1123 name for *spec* (``acme/ranker@2.1.0`` -> ``acme-ranker-2-1-0``), shortened with
    a hash of the spec when it is too long (so two specs never share one)."""
    base = re.sub(r"[^a-z0-9]+", "-", f"{spec.namespace}-{spec.name}-{spec.version}".lower()).strip("-")
    base = base.lstrip("0123456789-") or "model"
    if len(base) > MAX_NAME:
        tag = hashlib.sha256(str(spec).encode()).hexdigest()[:8]
        base = base[: MAX_NAME - 9].rstrip("-") + "-" + tag
    return base


def check_name(name: str) -> str:
    if not (_NAME.fullmatch(name) and len(name) <= MAX_NAME):
        raise UsageError(f"--name {name!r} is not an InferenceService name: lowercase letters, digits and '-', "
                         f"starting with a letter, at most {MAX_NAME} characters.")
    return name


def storage_uri(repository_uri: str, spec: ModelSpec) -> str:
    """The version's place as the cluster reaches it. The trailing '/' matters: KServe's S3
    download takes every key starting with the prefix, and ``…/1.0`` also starts ``…/1.0.1/``."""
    if not re.match(r"^(s3|gs|pvc|hdfs|webhdfs|https?|oci)://[^/]", repository_uri):
        raise UsageError(f"--repository-uri {repository_uri!r} is not a storage URI KServe reads "
                         "(s3://BUCKET/PREFIX, pvc://CLAIM/PATH, gs://…).")
    return f"{repository_uri.rstrip('/')}/{spec.relpath}/"


def runtime_manifest(image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The ClusterServingRuntime: one container running ``mlos-core serve`` on the delivered model."""
    probe = {"httpGet": {"path": "/v2/health/ready", "port": CONTAINER_PORT}, "periodSeconds": 5,
             "failureThreshold": 3}
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": RUNTIME_NAME, "annotations": {"serving.kserve.io/server-type": "mlos-core"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(CONTAINER_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True, "priority": 1}],
            "protocolVersions": ["v2"],
            "containers": [{
                "name": "kserve-container",
                "image": image,
                "args": ["serve", f"--model-dir={MODEL_DIR}", "--model-name={{.Name}}", "--host=0.0.0.0",
                         f"--port={CONTAINER_PORT}", f"--state-dir={STATE_DIR}"],
                "ports": [{"containerPort": CONTAINER_PORT, "name": "http", "protocol": "TCP"}],
                # The model is verified (every file's sha256) and loaded before the port opens;
                # a big one takes a while: the startup probe gives it up to 30 minutes.
                "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": CONTAINER_PORT},
                                 "periodSeconds": 10, "failureThreshold": 180},
                "readinessProbe": probe,
                "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": CONTAINER_PORT},
                                  "periodSeconds": 10, "failureThreshold": 3},
                "volumeMounts": [{"name": "mlos-state", "mountPath": STATE_DIR}],
                "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            }],
            "volumes": [{"name": "mlos-state", "emptyDir": {}}],
        },
    }


def inference_service(spec: ModelSpec, digest: str, deployment: Deployment, *, repository_uri: str | None = None,
                      name: str | None = None, service_account: str | None = None) -> dict[str, Any]:
    """The InferenceService serving *spec* pinned to *digest*, scaled as *deployment* says."""
    name = check_name(name) if name is not None else isvc_name(spec)
    if repository_uri is None:
        if not deployment.repository.startswith("s3://"):
            raise UsageError(f"The repository {deployment.repository} is a local directory, which a cluster does not "
                             "reach by that path.",
                             hint="give --repository-uri pvc://CLAIM/PATH (the repository on a volume claim) or "
                                  "publish to an s3:// repository")
        repository_uri = deployment.repository
    args = [f"--digest={digest}"]
    if deployment.gpus:
        if deployment.gpus != int(deployment.gpus):
            raise UsageError(f"gpus {deployment.gpus:g}: Kubernetes gives a pod whole GPUs (nvidia.com/gpu).",
                             hint="deploy with --gpus 1 (or more) for KServe; fractions are for Ray Serve")
        args.append("--device=cuda")
    args += [f"--set={key}={json.dumps(value)}" for key, value in sorted(deployment.server.items())]
    model: dict[str, Any] = {"modelFormat": {"name": MODEL_FORMAT, "version": "1"}, "runtime": RUNTIME_NAME,
                             "protocolVersion": "v2", "storageUri": storage_uri(repository_uri, spec), "args": args}
    if deployment.gpus:
        gpus = str(int(deployment.gpus))
        model["resources"] = {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
    predictor: dict[str, Any] = {"model": model}
    a = deployment.autoscale
    if a is None:
        predictor["minReplicas"] = predictor["maxReplicas"] = deployment.replicas
    else:
        predictor.update({"minReplicas": a.min_replicas, "maxReplicas": a.max_replicas, "scaleMetric": "concurrency",
                          "scaleTarget": max(1, math.ceil(a.target_ongoing_requests))})
    per_node = deployment.max_replicas_per_node
    if per_node is not None:
        if per_node != 1:
            raise UsageError(f"max_replicas_per_node {per_node}: Kubernetes caps replicas per node only at one "
                             "(pod anti-affinity).", hint="set max_replicas_per_node: 1, or leave it out, for KServe")
        predictor["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": name}},
            "topologyKey": "kubernetes.io/hostname"}]}}
    if service_account is not None:
        predictor["serviceAccountName"] = service_account  # the storage initializer's credentials for the store
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"axon.mlos.io/model": str(spec), "axon.mlos.io/digest": digest}},
        "spec": {"predictor": predictor},
    }


def emit_kserve(out_dir: Path, spec: ModelSpec, digest: str, deployment: Deployment, *, image: str = DEFAULT_IMAGE,
                repository_uri: str | None = None, name: str | None = None,
                service_account: str | None = None) -> list[Path]:
    """Write the runtime and the InferenceService into *out_dir* (each atomically); their paths."""
    isvc = inference_service(spec, digest, deployment, repository_uri=repository_uri, name=name,
                             service_account=service_account)
    docs = {f"{RUNTIME_NAME}-runtime.yaml": runtime_manifest(image),
            f"{isvc['metadata']['name']}.yaml": isvc}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, doc in docs.items():
        path = out_dir / filename
        atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False), mode=0o644)
        paths.append(path)
    return paths
