"""Manifest-digest pins (``sha256:<hex>`` of the manifest document): they cover every field of the
manifest, a host that honours one checks every file's sha256, and a republish that changes only
the manifest (same files) is a new manifest everywhere: reloaded, refetched, refused by a pin."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from axon.demo import sandbox_settings
from axon.object_repository import ObjectRepository
from axon.publish import publish
from axon.settings import Settings
from axon.store.manifest import manifest_digest_of, parse_manifest
from axon.store.object_cache import fetch_version
from axon.store.pin import is_manifest_pin, is_pin
from axon.store.s3 import ObjectStore
from axon.store.spec import parse_spec
from tests.support.core_server import core_server, publish_dir_as
from tests.support.onnx_models import write_mlp
from tests.support.publishing import SPEC, install_package
from tests.support.s3_server import s3_client
from tests.support.served import MLP

X = {"inputs": {"x": [[1, 2, 3, 4]]}}
HEX = "0123456789abcdef"


def rewrite_manifest(path: Path, change: object) -> str:
    """Edit a published manifest in place (as root could): *change* edits the parsed document.
    Returns the new manifest digest."""
    doc = yaml.safe_load(path.read_bytes())
    change(doc)  # type: ignore[operator]
    data = yaml.safe_dump(doc, sort_keys=False).encode()
    os.chmod(path, 0o644)
    path.write_bytes(data)
    return manifest_digest_of(data)


def test_a_manifest_pin_names_every_field_and_checks_sha256(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx", seed=1)
    version_dir = publish_dir_as(settings, MLP, tmp_path / "m")
    manifest_file = version_dir / "manifest.yaml"
    pin = "sha256:" + hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    content = parse_manifest(manifest_file.read_bytes(), "m").digest
    with core_server(settings.publish_dir, tmp_path) as c:
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": "sha256:" + "0" * 64})
        assert (status, body["code"]) == (409, "digest_mismatch") and pin in body["message"], body
        assert c.call("GET", "/models")[1]["models"] == []
        for bad in ("sha256:" + "0" * 63, "sha256:" + "A" * 64, "sha512:" + "0" * 64, "0" * 64):
            assert c.call("POST", "/models/register", {"model_id": MLP, "digest": bad})[0] == 400, bad
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})
        assert status == 201 and body["manifest_digest"] == pin and body["digest"] == content, body

        # The same files, another manifest (its description changed): a new generation.
        changed = rewrite_manifest(manifest_file, lambda d: d["metadata"].update(description="changed"))
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})
        assert (status, body["code"]) == (409, "digest_mismatch") and changed in body["message"], body
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP})
        assert status == 200 and body["status"] == "reloaded" and body["manifest_digest"] == changed, body

        # A manifest whose sha256 for the model is wrong (its xxh3-128 right): a manifest pin on it
        # checks sha256 and refuses the file; nothing of it is served.
        def wrong_sha256(doc: dict) -> None:  # type: ignore[type-arg]
            entry = next(f for f in doc["spec"]["files"] if f["path"] == "model.onnx")
            entry["sha256"] = "0" * 64

        assert c.call("DELETE", f"/models/{MLP}")[0] == 200
        inconsistent = rewrite_manifest(manifest_file, wrong_sha256)
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": inconsistent})
        assert (status, body["code"]) == (409, "integrity") and "model.onnx" in body["message"], body
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 404


def test_publish_reports_the_manifest_digest_to_pin(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx", seed=2)
    from axon.install import install

    install(parse_spec(MLP), settings, from_=str(tmp_path / "m"))
    result = publish(parse_spec(MLP), settings)
    assert result.manifest_digest == manifest_digest_of((Path(result.path) / "manifest.yaml").read_bytes())
    assert is_manifest_pin(result.manifest_digest)
    from axon.publish import published

    [row] = published(settings)
    assert row["manifest_digest"] == result.manifest_digest


@pytest.mark.parametrize("text,ok", [
    ("sha256:" + "a" * 64, True), ("f" * 32, True), ("sha256:" + "a" * 65, False), ("SHA256:" + "a" * 64, False),
    ("F" * 32, False), ("f" * 31, False), ("", False), (None, False), (32, False), ("sha256:" + "a" * 64 + "\n", False),
])
def test_pin_forms(text: object, ok: bool) -> None:
    assert is_pin(text) is ok


@given(st.text(alphabet=HEX + "sha256:G\n ", max_size=80))
def test_a_pin_is_exactly_one_of_two_forms(text: str) -> None:
    expected = (len(text) == 32 and set(text) <= set(HEX)) or (
        text.startswith("sha256:") and len(text) == 71 and set(text[7:]) <= set(HEX))
    assert is_pin(text) is expected


@given(st.binary(max_size=256))
def test_every_manifest_digest_is_a_pin(data: bytes) -> None:
    assert is_pin(manifest_digest_of(data)) and is_manifest_pin(manifest_digest_of(data))


@pytest.fixture()
def published_in_store(s3_settings: Settings, tmp_path: Path) -> ObjectStore:
    ObjectRepository.of(s3_settings).setup()
    install_package(s3_settings, tmp_path, seed=7)
    publish(parse_spec(SPEC), s3_settings)
    assert s3_settings.publish_store is not None
    return ObjectStore(s3_settings.publish_store)


def test_a_fetch_honours_a_manifest_pin(published_in_store: ObjectStore, tmp_path: Path) -> None:
    store = published_in_store
    found = store.get(f"{parse_spec(SPEC).relpath}/manifest.yaml")
    assert found is not None
    pin = manifest_digest_of(found[0])

    def fetch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlos_core", "fetch", SPEC, "--repository", str(store.location),
                               "--cache-dir", str(tmp_path / "fetched"), *args], capture_output=True, text=True,
                              check=False)

    r = fetch("--digest", "sha256:" + "1" * 64)
    assert r.returncode == 3 and pin in r.stderr and not (tmp_path / "fetched" / parse_spec(SPEC).relpath).exists()
    r = fetch("--digest", "sha256:nothex")
    assert r.returncode == 2 and "is not a digest" in r.stderr, r.stderr
    r = fetch("--digest", pin)
    assert r.returncode == 0, r.stderr
    local = tmp_path / "fetched" / parse_spec(SPEC).relpath / "manifest.yaml"
    assert manifest_digest_of(local.read_bytes()) == pin


def test_a_manifest_only_republish_is_fetched_again(published_in_store: ObjectStore, tmp_path: Path,
                                                    s3_endpoint: str) -> None:
    """Same files, another manifest (a --force that only changed the description): the cached copy
    is not current any more, and the next fetch brings the new manifest."""
    store, spec = published_in_store, parse_spec(SPEC)
    local = fetch_version(store, spec, tmp_path / "c")
    rel = f"{spec.relpath}/manifest.yaml"
    found = store.get(rel)
    assert found is not None
    doc = yaml.safe_load(found[0])
    doc["metadata"]["description"] = "republished"
    data = yaml.safe_dump(doc, sort_keys=False).encode()
    s3_client(s3_endpoint).put_object(Bucket=store.location.bucket, Key=store.location.key(rel), Body=data)
    assert fetch_version(store, spec, tmp_path / "c", digest=manifest_digest_of(data)) == local
    assert (local / "manifest.yaml").read_bytes() == data


def test_a_pin_given_for_the_copy_already_served_is_kept(tmp_path: Path) -> None:
    """Registering the loaded copy again with a (content) digest is `unchanged`, and the pin is
    saved: after a republish with other files, the restarted server refuses the new copy."""
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m1" / "model.onnx", seed=1)
    write_mlp(tmp_path / "m2" / "model.onnx", seed=2)
    version_dir = publish_dir_as(settings, MLP, tmp_path / "m1")
    pin = parse_manifest((version_dir / "manifest.yaml").read_bytes(), "m").digest
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})
        assert (status, body["status"]) == (200, "unchanged"), body
    publish_dir_as(settings, MLP, tmp_path / "m2", force=True)
    with core_server(settings.publish_dir, tmp_path) as c:
        status, ready, _ = c.call("GET", "/ready")
        assert status == 503 and pin in ready["failed"][MLP], ready
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 503


def test_a_pin_made_on_one_worker_reaches_the_others(tmp_path: Path) -> None:
    """Two workers serve a copy; after a republish, the admin pins the new manifest (one worker
    answers): the other worker reloads it too, so every answer comes from the pinned copy."""
    import concurrent.futures
    import time

    import numpy as np
    import onnxruntime as ort

    from tests.support.onnx_models import mlp_model

    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m1" / "model.onnx", seed=1)
    write_mlp(tmp_path / "m2" / "model.onnx", seed=2)
    first = manifest_digest_of((publish_dir_as(settings, MLP, tmp_path / "m1") / "manifest.yaml").read_bytes())
    expected = ort.InferenceSession(mlp_model(seed=2).SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.asarray(X["inputs"]["x"], np.float32)})[0]
    with core_server(settings.publish_dir, tmp_path, "--workers", "2") as c, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:  # connections at once land on both workers

        def served_digests() -> set[str | None]:
            return set(pool.map(lambda _: c.call("GET", f"/models/{MLP}")[1].get("manifest_digest"), range(32)))

        def wait_for(digest: str) -> set[str | None]:
            deadline = time.monotonic() + 60
            while (seen := served_digests()) != {digest} and time.monotonic() < deadline:
                time.sleep(0.3)
            return seen

        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
        assert wait_for(first) == {first}  # both workers serve the first copy
        version_dir = publish_dir_as(settings, MLP, tmp_path / "m2", force=True)
        pin = manifest_digest_of((version_dir / "manifest.yaml").read_bytes())
        assert served_digests() == {first}  # a republish alone changes nothing that is served
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})
        assert status == 200 and body["manifest_digest"] == pin, body
        assert wait_for(pin) == {pin}

        def all_from_the_pinned_copy() -> bool:  # a round of answers spread over both workers
            answers = list(pool.map(lambda _: c.call("POST", f"/models/{MLP}/inference", X), range(32)))
            assert all(status == 200 for status, _, _ in answers), answers
            return all(np.allclose(np.asarray(a["outputs"]["y"]["data"]), expected, rtol=1e-6) for _, a, _ in answers)

        deadline = time.monotonic() + 60  # connections land unevenly: the other worker may be seen late
        while not (done := all_from_the_pinned_copy()) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert done, "a worker still answers from the copy pinned before"


def test_a_sha256_pin_reloads_a_copy_checked_on_xxh3_alone(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx", seed=3)
    version_dir = publish_dir_as(settings, MLP, tmp_path / "m")
    pin = manifest_digest_of((version_dir / "manifest.yaml").read_bytes())
    with core_server(settings.publish_dir, tmp_path) as c:
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP})
        assert status == 201 and body["verification"] == "xxh3_128", body
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})
        assert (status, body["status"], body["verification"]) == (200, "reloaded", "sha256+xxh3_128"), body
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})
        assert (status, body["status"]) == (200, "unchanged"), body


def test_a_kserve_load_keeps_the_pin(tmp_path: Path) -> None:
    """The repository extension's load has no digest of its own: it keeps the registration's pin
    (a republished copy is refused) and takes one in parameters.digest."""
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m1" / "model.onnx", seed=1)
    write_mlp(tmp_path / "m2" / "model.onnx", seed=2)
    version_dir = publish_dir_as(settings, MLP, tmp_path / "m1")
    pin = manifest_digest_of((version_dir / "manifest.yaml").read_bytes())
    name, version = MLP.split("@")
    load = f"/v2/repository/models/{name}/load"
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("POST", "/models/register", {"model_id": MLP, "digest": pin})[0] == 201
        publish_dir_as(settings, MLP, tmp_path / "m2", force=True)
        status, body, _ = c.call("POST", load, {"parameters": {"version": version}})
        assert (status, body["code"]) == (409, "digest_mismatch"), body
        assert c.call("GET", f"/models/{MLP}")[1]["manifest_digest"] == pin  # still the pinned copy
        status, body, _ = c.call("POST", load, {"parameters": {"version": version, "digest": "nope"}})
        assert status == 400, body
        new = manifest_digest_of((version_dir / "manifest.yaml").read_bytes())
        assert c.call("POST", load, {"parameters": {"version": version, "digest": new}})[0] == 200
        assert c.call("GET", f"/models/{MLP}")[1]["manifest_digest"] == new


@pytest.mark.parametrize("field,value", [("sha256", "../../../../../tmp/planted"), ("sha256", "ab\x00cd"),
                                         ("xxh3_128", "X" * 32), ("sha256", "A" * 64)])
def test_a_file_digest_that_is_not_hex_makes_the_manifest_invalid(published_in_store: ObjectStore, tmp_path: Path,
                                                                   s3_endpoint: str, field: str, value: str) -> None:
    """A store writer cannot steer where a host writes its partial downloads through the manifest."""
    from axon.errors import IntegrityError, InvalidManifestError

    store, spec = published_in_store, parse_spec(SPEC)
    rel = f"{spec.relpath}/manifest.yaml"
    found = store.get(rel)
    assert found is not None
    doc = yaml.safe_load(found[0])
    doc["spec"]["files"][0][field] = value
    data = yaml.safe_dump(doc, sort_keys=False).encode()
    with pytest.raises(InvalidManifestError, match="lowercase hex"):
        parse_manifest(data, "m")
    s3_client(s3_endpoint).put_object(Bucket=store.location.bucket, Key=store.location.key(rel), Body=data)
    with pytest.raises(IntegrityError, match="is not valid"):
        fetch_version(store, spec, tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.part"))


def test_nested_specs_are_not_cached_over_each_other(s3_settings: Settings, tmp_path: Path) -> None:
    from axon.errors import CacheConflictError

    ObjectRepository.of(s3_settings).setup()
    store = ObjectStore(s3_settings.publish_store)  # type: ignore[arg-type]
    for seed, spec in ((8, "acme/org/repo@v1"), (9, "acme/org@repo")):
        install_package(s3_settings, tmp_path, seed=seed, spec=spec)
        publish(parse_spec(spec), s3_settings)
    inner = fetch_version(store, parse_spec("acme/org/repo@v1"), tmp_path / "c")
    with pytest.raises(CacheConflictError, match="cannot be cached next to"):
        fetch_version(store, parse_spec("acme/org@repo"), tmp_path / "c")
    assert (inner / "manifest.yaml").is_file()
