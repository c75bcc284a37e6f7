"""MLOS Core as a KServe serving runtime: the manifests ``axon deploy --emit kserve`` writes
validate against KServe's own CRD schemas (v0.20, tests/data/kserve), and the runtime's
container command line, run here as the kubelet would run it, serves a model laid out as
KServe's real storage initializer (``kserve_storage``, against a real S3 server) leaves it,
with the library's numbers, and refuses another publish."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from axon.object_repository import ObjectRepository
from axon.settings import Settings
from axon.store.deployment import Autoscale, Deployment
from axon.store.spec import parse_spec
from tests.support.core_server import publish_dir_as
from tests.support.st_models import SHORT, STModel, assert_same_embeddings

DATA = Path(__file__).resolve().parents[1] / "data" / "kserve"
SPEC = "acme/minilm@1.0.0"
OTHER_GID = 54_322  # nobody's group
CRD_DIGESTS = {"inferenceservices": "57c3bf13f77de94678bf2ae3748056ec071ad2b9e88d6a28f44fb4710758fcff",
               "clusterservingruntimes": "c6f6bbb1b4b11afd1e38bd6d7255a8795b86efa2b7d14946ccff9d23592e6846"}


def crd_schema(kind: str) -> dict[str, Any]:
    raw = gzip.decompress((DATA / f"serving.kserve.io_{kind}.yaml.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == CRD_DIGESTS[kind], "the vendored CRD is not KServe's"
    (version,) = [v for v in yaml.safe_load(raw)["spec"]["versions"] if v.get("served")]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def pruned_fields(doc: Any, schema: dict[str, Any], at: str = "") -> list[str]:
    """What the API server would silently drop from *doc* (structural-schema pruning): fields
    the schema does not declare where it does not preserve unknown ones."""
    if isinstance(doc, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") or at in ("metadata", ".metadata"):
            return []
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = []
        for key, value in doc.items():
            if props is not None and key in props:
                out += pruned_fields(value, props[key], f"{at}.{key}")
            elif isinstance(extra, dict):
                out += pruned_fields(value, extra, f"{at}.{key}")
            else:
                out.append(f"{at}.{key}")
        return out
    if isinstance(doc, list) and "items" in schema:
        return [p for i, item in enumerate(doc) for p in pruned_fields(item, schema["items"], f"{at}[{i}]")]
    return []


def check_against_crd(doc: dict[str, Any], kind: str) -> None:
    schema = crd_schema(kind)
    jsonschema.validate(doc, schema)
    assert pruned_fields(doc, schema) == [], "fields KServe's API server would drop"


def test_the_schema_check_catches_a_wrong_manifest() -> None:
    from axon.kserve_manifests import inference_service, runtime_manifest

    isvc = inference_service(parse_spec(SPEC), "sha256:" + "a" * 64, Deployment("s3://b/p"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://typo/"  # pruned silently by Kubernetes
    assert pruned_fields(isvc, crd_schema("inferenceservices")) == [".spec.predictor.model.storageURI"]
    runtime = runtime_manifest()
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"  # a string where an integer goes
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(runtime, crd_schema("clusterservingruntimes"))


@pytest.mark.parametrize("deployment", [
    Deployment("s3://models/prod"),
    Deployment("s3://models/prod", replicas=3, gpus=1.0, max_replicas_per_node=1, server={"max_batch_size": 64,
                                                                                          "precision": "fp16"}),
    Deployment("s3://models/prod", autoscale=Autoscale(0, 4, 2.5)),
], ids=["default", "gpus", "autoscale"])
def test_emitted_manifests_validate_against_the_kserve_crds(deployment: Deployment) -> None:
    from axon.kserve_manifests import MODEL_FORMAT, RUNTIME_NAME, inference_service, runtime_manifest

    runtime = runtime_manifest("registry.example/mlos-core:1")
    isvc = inference_service(parse_spec(SPEC), "sha256:" + "a" * 64, deployment)
    check_against_crd(runtime, "clusterservingruntimes")
    check_against_crd(isvc, "inferenceservices")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"] == RUNTIME_NAME
    assert predictor["model"]["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"] \
        == MODEL_FORMAT
    assert predictor["model"]["storageUri"] == "s3://models/prod/acme/minilm/1.0.0/"
    assert "--digest=sha256:" + "a" * 64 in predictor["model"]["args"]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    if deployment.autoscale:
        assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleTarget"]) == (0, 4, 3)
    else:
        assert predictor["minReplicas"] == predictor["maxReplicas"] == deployment.replicas
    if deployment.gpus:
        assert predictor["model"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        assert "--device=cuda" in predictor["model"]["args"] and "--set=max_batch_size=64" in predictor["model"]["args"]
        assert predictor["affinity"]["podAntiAffinity"]


def test_names_are_kubernetes_names() -> None:
    from axon.kserve_manifests import isvc_name

    assert isvc_name(parse_spec("acme/ranker@2.1.0")) == "acme-ranker-2-1-0"
    long_a, long_b = (isvc_name(parse_spec(f"team/{'x' * 60}@{v}")) for v in ("1", "2"))
    assert long_a != long_b and max(len(long_a), len(long_b)) <= 45
    for name in (long_a, isvc_name(parse_spec("9lives/Model_X@1.0"))):
        jsonschema.validate(name, {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"})


def runtime_command(runtime: dict[str, Any], isvc: dict[str, Any], model_dir: Path, state: Path,
                    port_file: Path) -> list[str]:
    """The container's command line as the kubelet runs it: the image's entrypoint, the runtime's
    args with KServe's {{.Name}} filled in, then the InferenceService's args (KServe concatenates
    them). Only what the pod provides is put here: its mounts and a free local port."""
    (container,) = runtime["spec"]["containers"]
    args = [*container["args"], *isvc["spec"]["predictor"]["model"]["args"]]
    here = {"{{.Name}}": isvc["metadata"]["name"], "/mnt/models": str(model_dir), "/var/lib/mlos-core": str(state),
            "--port=8080": "--port=0", "--host=0.0.0.0": "--host=127.0.0.1"}
    for old, new in here.items():
        args = [a.replace(old, new) for a in args]
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    entrypoint = next(json.loads(line.split(None, 1)[1]) for line in dockerfile.splitlines()
                      if line.startswith("ENTRYPOINT"))
    assert entrypoint == ["mlos-core"]  # the console script; run here as the module it calls
    return [sys.executable, "-m", "mlos_core", *args, "--port-file", str(port_file)]


def start(cmd: list[str], port_file: Path, log: Path, timeout: float = 120) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def storage_initializer(uri: str, out: Path) -> None:
    """KServe's own storage initializer code, in its own process as in the pod's init container."""
    subprocess.run([sys.executable, "-c", "import sys; from kserve_storage import Storage; "
                    "Storage.download(sys.argv[1], sys.argv[2])", uri, str(out)], check=True,
                   capture_output=True, timeout=120)


def sandbox_env(tmp_path: Path) -> dict[str, str]:
    """The environment of sandbox_settings(tmp_path) (its dev cache and production repository)."""
    return {**os.environ, "AXON_HOME": str(tmp_path / "home" / ".axon"), "AXON_CACHE_DIR": str(tmp_path / "cache"),
            "AXON_PUBLISH_DIR": str(tmp_path / "production"), "HOME": str(tmp_path / "home")}


def axon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "axon", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def emitted(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    result = axon(env, "deploy", SPEC, "--emit", "kserve", "--file", str(tmp_path / "mlos-deploy.yaml"), "--json",
                  *extra)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    docs = {doc["kind"]: doc for doc in (yaml.safe_load(Path(p).read_text()) for p in body["manifests"])}
    return docs["ClusterServingRuntime"], docs["InferenceService"]


def test_the_runtime_serves_what_the_storage_initializer_delivered(
        s3_settings: Settings, st_models: dict[str, STModel], tmp_path: Path) -> None:
    import tritonclient.http as triton

    ObjectRepository.of(s3_settings).setup()
    oracle = st_models["mean-norm"]
    publish_dir_as(s3_settings, SPEC, oracle.path)
    publish_dir_as(s3_settings, SPEC, oracle.path, force=True)  # a second generation under the same prefix
    runtime, isvc = emitted(tmp_path, dict(os.environ))
    check_against_crd(isvc, "inferenceservices")
    models = tmp_path / "mnt-models"
    storage_initializer(isvc["spec"]["predictor"]["model"]["storageUri"], models)
    for p in [models, *models.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)  # KServe mounts it read-only into the server's container
    port_file = tmp_path / "port"
    proc = start(runtime_command(runtime, isvc, models, tmp_path / "state", port_file), port_file, tmp_path / "log")
    try:
        assert port_file.exists(), (tmp_path / "log").read_text()[-3000:]
        url = f"127.0.0.1:{port_file.read_text()}"
        client = triton.InferenceServerClient(url)
        name = isvc["metadata"]["name"]
        assert client.is_server_ready() and client.is_model_ready(name)
        text = triton.InferInput("text", [len(SHORT)], "BYTES")
        text.set_data_from_numpy(np.asarray(SHORT, dtype=object))
        got = client.infer(name, [text]).as_numpy("embeddings")
        assert_same_embeddings(got, oracle.encode(SHORT))
        status = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                                 f"http://{url}/models/register", "-d", "{}"], capture_output=True, text=True)
        assert status.stdout in ("401", "409"), status.stdout  # nobody changes what an InferenceService serves
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_runtime_refuses_another_publish_or_damaged_bytes(
        s3_settings: Settings, st_models: dict[str, STModel], tmp_path: Path) -> None:
    ObjectRepository.of(s3_settings).setup()
    publish_dir_as(s3_settings, SPEC, st_models["cls"].path)
    runtime, isvc = emitted(tmp_path, dict(os.environ))
    models = tmp_path / "mnt-models"
    storage_initializer(isvc["spec"]["predictor"]["model"]["storageUri"], models)

    other = json.loads(json.dumps(isvc))
    other["spec"]["predictor"]["model"]["args"] = ["--digest=sha256:" + "0" * 64]  # pinned to another publish
    port_file = tmp_path / "port"
    proc = start(runtime_command(runtime, other, models, tmp_path / "state", port_file), port_file, tmp_path / "log1")
    assert proc.wait(60) == 3 and not port_file.exists()
    lines = (tmp_path / "log1").read_text().strip().splitlines()
    assert lines[0].startswith("error: ") and "not the pinned sha256:0000" in lines[0], lines

    (weights,) = [p for p in models.rglob("model.onnx")]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte after the storage initializer wrote the file
    weights.write_bytes(bytes(data))
    for workers in (1, 2):
        log = tmp_path / f"log-damaged-{workers}"
        cmd = [*runtime_command(runtime, isvc, models, tmp_path / "state", port_file), f"--set=workers={workers}"]
        proc = start(cmd, port_file, log)
        assert proc.wait(120) == 3  # not a clean exit, with or without workers (no restart loop either)
        assert workers > 1 or not port_file.exists()  # one process never listens; workers share a socket bound first
        port_file.unlink(missing_ok=True)
        text = log.read_text()
        assert "does not match its recorded hash" in text and "Traceback" not in text, text[-3000:]


def test_a_version_directory_mounted_from_a_pvc_is_served(st_models: dict[str, STModel], tmp_path: Path) -> None:
    """pvc://CLAIM/PATH: KServe mounts the repository's version directory itself at /mnt/models."""
    import openai

    from axon.demo import sandbox_settings

    settings = sandbox_settings(tmp_path)
    version_dir = publish_dir_as(settings, SPEC, st_models["cls"].path)
    if os.geteuid() == 0:  # whoever delivered the directory: its group must not get to read the admin token
        os.chown(version_dir, -1, OTHER_GID)
    runtime, isvc = emitted(tmp_path, sandbox_env(tmp_path), "--repository-uri", "pvc://models/prod")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/prod/acme/minilm/1.0.0/"
    port_file = tmp_path / "port"
    proc = start(runtime_command(runtime, isvc, version_dir, tmp_path / "state", port_file), port_file,
                 tmp_path / "log")
    name = isvc["metadata"]["name"]
    oracle = st_models["cls"].encode(["hello"])
    try:
        assert port_file.exists(), (tmp_path / "log").read_text()[-3000:]
        import urllib.request

        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]})
        for path in (f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/1.0.0/infer"):
            req = urllib.request.Request(f"http://127.0.0.1:{port_file.read_text()}{path}", data=body.encode(),
                                         method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                out = json.loads(resp.read())
            emb = next(o for o in out["outputs"] if o["name"] == "embeddings")
            assert_same_embeddings(np.asarray(emb["data"], np.float32).reshape(emb["shape"]), oracle)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port_file.read_text()}/v1", api_key="unused")
        for model in (name, f"{name}@1.0.0"):  # the InferenceService's name is the model's in every API
            got = client.embeddings.create(model=model, input=["hello"])
            assert_same_embeddings(np.asarray([d.embedding for d in got.data], np.float32), oracle)
    finally:
        proc.terminate()
        proc.wait(30)
    if os.geteuid() == 0:
        assert (tmp_path / "state" / "token").stat().st_gid != OTHER_GID


def test_the_delivered_files_are_never_reached_through_a_symlink(tmp_path: Path) -> None:
    """``<content digest>/`` beside the manifest (the s3 layout): a symlink there is refused, and
    one swapped in after the server chose the directory is refused where files are read."""
    import shutil

    from axon.demo import sandbox_settings
    from axon.store.manifest import load_manifest
    from mlos_core.errors import ApiError
    from mlos_core.repository import locate_delivered, read_verified_model, verify_files
    from tests.support.onnx_models import write_mlp

    write_mlp(tmp_path / "src" / "model.onnx")
    version_dir = publish_dir_as(sandbox_settings(tmp_path), SPEC, tmp_path / "src")
    digest = load_manifest(version_dir / "manifest.yaml").digest
    models, elsewhere = tmp_path / "mnt-models", tmp_path / "elsewhere"
    shutil.copytree(version_dir, models / digest)
    shutil.copy(version_dir / "manifest.yaml", models / "manifest.yaml")
    shutil.copytree(version_dir, elsewhere)

    located = locate_delivered(models)
    assert located.version_dir == models / digest
    read_verified_model(located, sha256=True)  # the real directory is served
    shutil.rmtree(models / digest)
    (models / digest).symlink_to(elsewhere)  # swapped in after the choice (same bytes, outside the mount)
    with pytest.raises(ApiError) as read:
        read_verified_model(located, sha256=True)
    with pytest.raises(ApiError) as verified:
        verify_files(models, located, sha256=True)
    assert read.value.status == verified.value.status == 403
    with pytest.raises(ApiError) as chosen:  # and one there from the start is never chosen
        locate_delivered(models)
    assert chosen.value.status == 403 and "symlink" in chosen.value.message


def test_a_delivered_manifest_is_read_only_up_to_a_bound(tmp_path: Path) -> None:
    from axon.errors import InvalidManifestError
    from axon.store.manifest import MAX_MANIFEST_BYTES, load_manifest

    huge = tmp_path / "manifest.yaml"
    with open(huge, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing of it needs to be in memory to refuse it
    with pytest.raises(InvalidManifestError, match="larger than 16 MiB"):
        load_manifest(huge)


@pytest.mark.parametrize(("args", "says"), [
    (["--gpus", "0.5"], "whole GPUs"),
    (["--name", "Not_A_Name"], "is not an InferenceService name"),
    ([], "--repository-uri"),  # a local repository: the cluster does not reach it by that path
])
def test_emit_refuses_what_kserve_cannot_express(args: list[str], says: str, tmp_path: Path) -> None:
    from axon.demo import sandbox_settings
    from tests.support.onnx_models import write_mlp

    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "src" / "model.onnx")
    publish_dir_as(settings, SPEC, tmp_path / "src")
    file = tmp_path / "mlos-deploy.yaml"
    extra = [*args, "--repository-uri", "pvc://m/p"] if args else []
    result = axon(sandbox_env(tmp_path), "deploy", SPEC, "--emit", "kserve", "--file", str(file), *extra)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not file.exists() and not (tmp_path / "kserve").exists()  # refused before anything was written


@pytest.mark.parametrize(("args", "says"), [
    (["--set", "max_batch_size=lots"], "max_batch_size in --set must be int"),
    (["--set", "repository=/elsewhere"], "--set may not set repository"),
    (["--set", "novel_knob=1"], "unknown server setting(s) in --set: novel_knob"),
    (["--model-dir", "."], "--model-dir needs --digest sha256:"),
    (["--digest", "sha256:" + "a" * 64], "--digest and --model-name go with --model-dir"),
    (["--model-dir", ".", "--digest", "sha256:" + "a" * 64, "--model-name", "Acme/Ranker"],
     "--model-name must be a DNS-1123 label"),
])
def test_serve_options_for_the_runtime_are_checked(args: list[str], says: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mlos_core", "serve", *args], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
