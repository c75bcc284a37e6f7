"""MLOS Core serving an s3:// repository from a verified local copy, against a real S3 server
(moto): outputs as onnxruntime computes them, a tampered object or a wrong pinned digest refused
(409) with nothing loaded, eviction on unregister."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from axon.core_process import running_core
from axon.object_repository import ObjectRepository
from axon.publish import publish
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.core_server import Core
from tests.support.onnx_models import mlp_model
from tests.support.publishing import SPEC, install_package
from tests.support.s3_server import s3_client

X = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture(autouse=True)
def set_up(s3_settings: Settings) -> None:
    ObjectRepository.of(s3_settings).setup()


def served(settings: Settings, tmp_path: Path) -> object:
    token = tmp_path / "token"
    return running_core(str(settings.publish_store), tmp_path, [
        "--device", "cpu", "--cache-dir", str(tmp_path / "serving-cache"), "--state-dir", str(tmp_path / "state"),
        "--token-file", str(token)])


def core_of(proc: object, tmp_path: Path) -> Core:
    return Core(proc.url, (tmp_path / "token").read_text().strip(), proc.proc, proc.log)  # type: ignore[attr-defined]


def reference(seed: int) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(mlp_model(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(X, np.float32)})[0]  # type: ignore[no-any-return]


def test_serving_a_version_from_the_store(s3_settings: Settings, tmp_path: Path) -> None:
    digest = install_package(s3_settings, tmp_path, seed=1)
    publish(parse_spec(SPEC), s3_settings)
    with served(s3_settings, tmp_path) as proc:  # type: ignore[attr-defined]
        c = core_of(proc, tmp_path)
        status, body, _ = c.call("POST", "/models/register", {"model_id": SPEC, "digest": digest})
        assert status == 201 and body["digest"] == digest, body
        status, answer, _ = c.call("POST", f"/models/{SPEC}/inference", {"inputs": {"x": X}})
        assert status == 200, answer
        np.testing.assert_allclose(np.asarray(answer["outputs"]["y"]["data"]), reference(1), rtol=1e-6)
        local = tmp_path / "serving-cache" / parse_spec(SPEC).relpath
        assert (local / "manifest.yaml").is_file() and (local / "model.onnx").stat().st_mode & 0o222 == 0
        assert c.call("DELETE", f"/models/{SPEC}")[0] == 200
        assert not local.exists()  # no registration uses it any more: evicted
        status, body, _ = c.call("POST", "/models/register", {"model_id": "acme/nothing@1"})
        assert (status, body["code"]) == (404, "not_published")
        status, body, _ = c.call("POST", "/models/register", {"manifest_path": "acme/ranker/1.0.0"})
        assert status == 400


def test_a_tampered_object_or_a_wrong_pin_loads_nothing(s3_settings: Settings, tmp_path: Path,
                                                         s3_endpoint: str) -> None:
    digest = install_package(s3_settings, tmp_path, seed=2)
    publish(parse_spec(SPEC), s3_settings)
    loc = s3_settings.publish_store
    assert loc is not None
    with served(s3_settings, tmp_path) as proc:  # type: ignore[attr-defined]
        c = core_of(proc, tmp_path)
        status, body, _ = c.call("POST", "/models/register", {"model_id": SPEC, "digest": "f" * 32})
        assert (status, body["code"]) == (409, "digest_mismatch"), body
        key = loc.key(f"{parse_spec(SPEC).relpath}/{digest}/tokenizer/vocab.txt")
        s3_client(s3_endpoint).put_object(Bucket=loc.bucket, Key=key, Body=b"[PAD]\n[UNK]\nhellX2\n")
        status, body, _ = c.call("POST", "/models/register", {"model_id": SPEC})
        assert (status, body["code"]) == (409, "integrity") and "does not match its manifest" in body["message"]
        assert c.call("GET", "/models")[1]["models"] == []
        assert not (tmp_path / "serving-cache" / parse_spec(SPEC).relpath).exists()  # nothing moved into place


def test_mlos_core_fetch(s3_settings: Settings, tmp_path: Path, s3_endpoint: str) -> None:
    import subprocess
    import sys

    digest = install_package(s3_settings, tmp_path, seed=3)
    publish(parse_spec(SPEC), s3_settings)
    url = str(s3_settings.publish_store)

    def fetch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlos_core", "fetch", SPEC, "--repository", url,
                               "--cache-dir", str(tmp_path / "fetched"), *args], capture_output=True, text=True,
                              check=False)

    r = fetch("--digest", "0" * 32)
    assert r.returncode == 3 and "not the pinned" in r.stderr, r.stderr
    r = fetch("--digest", digest)
    assert r.returncode == 0 and "every file verified" in r.stdout, r.stderr
    local = tmp_path / "fetched" / parse_spec(SPEC).relpath
    assert (local / "model.onnx").read_bytes() == mlp_model(seed=3).SerializeToString()
    r = subprocess.run([sys.executable, "-m", "mlos_core", "fetch", SPEC, "--repository", "s3://Bad_Bucket/x"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "not a valid bucket name" in r.stderr


def test_a_fetch_resumes_a_partial_download_and_distrusts_it(s3_settings: Settings, tmp_path: Path) -> None:
    from axon.store.layout import StoreLayout, version_key
    from axon.store.manifest import load_manifest
    from axon.store.object_cache import fetch_version
    from axon.store.s3 import ObjectStore

    digest = install_package(s3_settings, tmp_path, seed=4)
    publish(parse_spec(SPEC), s3_settings)
    spec = parse_spec(SPEC)
    manifest = load_manifest(s3_settings.cache_dir / spec.relpath / "manifest.yaml")
    model = next(e for e in manifest.files if e.path == "model.onnx")
    vocab = next(e for e in manifest.files if e.path == "tokenizer/vocab.txt")
    good = (s3_settings.cache_dir / spec.relpath / "model.onnx").read_bytes()
    cache = tmp_path / "resumed"
    downloads = StoreLayout(cache).downloads / version_key(spec) / digest
    downloads.mkdir(parents=True)
    (downloads / f"{model.sha256}.part").write_bytes(good[: len(good) // 2])  # an interrupted fetch's half
    (downloads / f"{vocab.sha256}.part").write_bytes(b"XXXX")  # a damaged leftover
    assert s3_settings.publish_store is not None
    local = fetch_version(ObjectStore(s3_settings.publish_store), spec, cache, digest=digest)
    assert (local / "model.onnx").read_bytes() == good
    assert (local / "tokenizer" / "vocab.txt").read_bytes() == (s3_settings.cache_dir / spec.relpath /
                                                                  "tokenizer" / "vocab.txt").read_bytes()
    assert not downloads.exists() and not downloads.parent.exists()


def test_a_damaged_local_copy_is_fetched_again(s3_settings: Settings, tmp_path: Path) -> None:
    from axon.store.object_cache import fetch_version
    from axon.store.s3 import ObjectStore

    digest = install_package(s3_settings, tmp_path, seed=5)
    publish(parse_spec(SPEC), s3_settings)
    assert s3_settings.publish_store is not None
    store = ObjectStore(s3_settings.publish_store)
    local = fetch_version(store, parse_spec(SPEC), tmp_path / "c", digest=digest)
    vocab = local / "tokenizer" / "vocab.txt"
    good = vocab.read_bytes()
    os.chmod(vocab, 0o644)
    vocab.write_bytes(good.replace(b"hello5", b"hellX5"))  # same size, other bytes
    assert fetch_version(store, parse_spec(SPEC), tmp_path / "c", digest=digest) == local
    assert vocab.read_bytes() == good


def test_the_pipeline_through_the_clis(s3_settings: Settings, tmp_path: Path, axon_cli: object) -> None:
    """install → setup-production → publish to s3:// → mlos-core serve --repository s3:// →
    axon register --digest <manifest digest> → inference equal to onnxruntime's own answer."""
    import json
    import urllib.request

    from tests.support.onnx_models import write_mlp

    run = axon_cli  # type: ignore[assignment]
    write_mlp(tmp_path / "m" / "model.onnx", seed=11)
    assert run("install", SPEC, "--from", str(tmp_path / "m")).code == 0  # type: ignore[operator]
    r = run("publish", SPEC, "--json")  # type: ignore[operator]
    assert r.code == 0, r.stderr
    pin = json.loads(r.stdout)["manifest_digest"]
    assert pin.startswith("sha256:")
    with served(s3_settings, tmp_path) as proc:  # type: ignore[attr-defined]
        env = {"MLOS_CORE_ENDPOINT": proc.url, "MLOS_CORE_TOKEN_FILE": str(tmp_path / "token")}
        r = run("register", SPEC, "--digest", "sha256:" + "0" * 64, env=env)  # type: ignore[operator]
        assert r.code == 3 and "not the pinned" in r.stderr, r.stderr
        r = run("register", SPEC, "--digest", pin, "--json", env=env)  # type: ignore[operator]
        assert r.code == 0 and json.loads(r.stdout)["manifest_digest"] == pin, r.stderr
        req = urllib.request.Request(f"{proc.url}/models/{SPEC}/inference", method="POST",
                                     data=json.dumps({"inputs": {"x": X}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        np.testing.assert_allclose(np.asarray(answer["outputs"]["y"]["data"]), reference(11), rtol=1e-6)


@pytest.mark.parametrize("tamper", ["inconsistent", "other-sha256"])
def test_a_tampered_manifest_loads_nothing(s3_settings: Settings, tmp_path: Path, s3_endpoint: str,
                                           tamper: str) -> None:
    """A manifest edited in the store: one whose digest no longer matches its file list is not a
    manifest; one that names other bytes for a file fails on the bytes downloaded. 409 either way,
    nothing moved into place, nothing loaded."""
    import yaml

    install_package(s3_settings, tmp_path, seed=12)
    publish(parse_spec(SPEC), s3_settings)
    loc = s3_settings.publish_store
    assert loc is not None
    key = loc.key(f"{parse_spec(SPEC).relpath}/manifest.yaml")
    client = s3_client(s3_endpoint)
    doc = yaml.safe_load(client.get_object(Bucket=loc.bucket, Key=key)["Body"].read())
    entry = next(f for f in doc["spec"]["files"] if f["path"] == "model.onnx")
    if tamper == "inconsistent":
        entry["xxh3_128"] = "0" * 32  # the integrity digest covers it: the manifest is invalid
    else:
        entry["sha256"] = "0" * 64  # not covered by the content digest: caught on the downloaded bytes
    client.put_object(Bucket=loc.bucket, Key=key, Body=yaml.safe_dump(doc, sort_keys=False).encode())
    with served(s3_settings, tmp_path) as proc:  # type: ignore[attr-defined]
        c = core_of(proc, tmp_path)
        status, body, _ = c.call("POST", "/models/register", {"model_id": SPEC})
        assert (status, body["code"]) == (409, "integrity"), body
        assert c.call("GET", "/models")[1]["models"] == []
        assert not (tmp_path / "serving-cache" / parse_spec(SPEC).relpath).exists()
