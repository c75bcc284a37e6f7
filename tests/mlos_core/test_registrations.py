"""Saved registrations that cannot be loaded (issue #11, item 7): the server starts anyway and lists
them as failed, and a failed one is not loaded (so not re-hashed) again on every request."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from axon.demo import sandbox_settings
from tests.support.core_server import core_server, publish_dir_as
from tests.support.onnx_models import write_mlp
from tests.support.served import MLP

X = {"inputs": {"x": [[1, 2, 3, 4]]}}


def reads_update_atime(directory: Path) -> bool:
    """Whether reading a file whose atime is older than its mtime updates it here (relatime, strictatime)."""
    probe = directory / "atime-probe"
    probe.write_bytes(b"x")
    st = probe.stat()
    os.utime(probe, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    probe.read_bytes()
    return probe.stat().st_atime_ns != st.st_mtime_ns - 10**12


def write_unloadable_model(path: Path) -> None:
    """A well-formed ONNX file onnxruntime refuses when it creates the session: its output is
    declared float but the graph computes int64 (only type inference, at session creation, sees it)."""
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)
    graph = helper.make_graph([node], "unloadable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    onnx.load(str(path))


def test_a_failed_registration_answers_503_without_rehashing(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx")
    version_dir = publish_dir_as(settings, MLP, tmp_path / "m")
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
    model_file = version_dir / "model.onnx"
    good = model_file.read_bytes()
    damaged = bytearray(good)
    damaged[-5] ^= 0xFF  # same size, other content: verification fails (409 integrity)
    os.chmod(model_file, 0o644)
    model_file.write_bytes(bytes(damaged))
    with core_server(settings.publish_dir, tmp_path) as c:  # restores the saved registration: it fails
        status, ready, _ = c.call("GET", "/ready")
        assert status == 503 and ready["models"] == [] and ready["failed"][MLP], ready
        listed = {m["model_id"]: m for m in c.call("GET", "/models")[1]["models"]}
        assert listed[MLP]["state"] == "failed" and listed[MLP]["error"] == ready["failed"][MLP]
        st = model_file.stat()
        old_atime = st.st_mtime_ns - 10**12
        os.utime(model_file, ns=(old_atime, st.st_mtime_ns))  # any read of the file from now on moves it
        kserve = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        for path, body in [(f"/models/{MLP}/inference", X)] * 10 + [("/v2/models/demo/mlp/versions/1/infer",
                                                                     kserve)] * 5:
            status, answer, _ = c.call("POST", path, body)
            assert (status, answer["code"]) == (503, "model_failed"), answer
            assert MLP in answer["message"] and "register it again" in answer["message"]
        if reads_update_atime(tmp_path):
            assert model_file.stat().st_atime_ns == old_atime, "the failed model's file was read again"
        log = c.log.read_text()
        assert log.count(f"could not load saved registration {MLP}") == 1, log
        # fixed and registered again by an admin, it serves
        model_file.write_bytes(good)
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 200
        assert c.call("GET", "/ready")[0] == 200
    assert "Traceback" not in c.log.read_text()


def test_bad_saved_registrations_do_not_stop_startup(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx")
    publish_dir_as(settings, MLP, tmp_path / "m")
    write_unloadable_model(tmp_path / "u" / "model.onnx")
    publish_dir_as(settings, "demo/unloadable@1", tmp_path / "u")
    state = tmp_path / "core-state"
    state.mkdir()
    saved = [MLP, "demo/unloadable@1", "demo/missing@1", "not a model id", 42, None]
    (state / "registrations.json").write_text(json.dumps({"models": saved}))
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 200
        status, ready, _ = c.call("GET", "/ready")
        assert status == 503 and ready["models"] == [MLP]
        failed = ready["failed"]
        assert "Type" in failed["demo/unloadable@1"] and "no published model" in failed["demo/missing@1"] \
            and "not a model id" in failed, failed
        assert "42" in failed[str(state / "registrations.json")]
        listed = {m["model_id"]: m["state"] for m in c.call("GET", "/models")[1]["models"]}
        assert listed == {MLP: "ready", **dict.fromkeys(failed, "failed")}
        # the unloadable model answers 503 with why, and registering it is a 4xx, not a 500
        status, answer, _ = c.call("POST", "/models/demo/unloadable@1/inference", X)
        assert (status, answer["code"]) == (503, "model_failed")
        status, answer, _ = c.call("POST", "/models/register", {"model_id": "demo/unloadable@1"})
        assert status in (400, 422) and "Type" in answer["message"], answer
    assert "Traceback" not in c.log.read_text()


@pytest.mark.parametrize("content", ["[1, 2]", '{"models": "demo/mlp@1"}', "not json", '{"models": [[]]}', "null"])
def test_a_malformed_registrations_file_does_not_stop_startup(tmp_path: Path, content: str) -> None:
    settings = sandbox_settings(tmp_path)
    state = tmp_path / "core-state"
    state.mkdir()
    (state / "registrations.json").write_text(content)
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("GET", "/health")[0] == 200
        status, ready, _ = c.call("GET", "/ready")
        assert status == 503 and list(ready["failed"]) == [str(state / "registrations.json")], ready
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 404  # nothing was loaded from it
        assert c.call("GET", "/v2/repository/index")[0] == 200
    assert "Traceback" not in c.log.read_text()


def test_an_unregistered_model_stays_gone_under_requests_for_it(tmp_path: Path) -> None:
    """Requests keep asking for a model while an admin unregisters it: once the DELETE has
    answered, no request may have loaded it back from the registrations file (the file is
    rewritten before the model leaves memory, so a request sees it loaded or not saved)."""
    import threading

    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m" / "model.onnx")
    publish_dir_as(settings, MLP, tmp_path / "m")
    with core_server(settings.publish_dir, tmp_path) as c:
        for _ in range(5):
            assert c.call("POST", "/models/register", {"model_id": MLP})[0] in (200, 201)
            stop = threading.Event()
            statuses: list[int] = []

            def ask(stop: threading.Event = stop, statuses: list[int] = statuses) -> None:
                while not stop.is_set():
                    statuses.append(c.call("POST", f"/models/{MLP}/inference", X)[0])

            askers = [threading.Thread(target=ask) for _ in range(4)]
            for t in askers:
                t.start()
            assert c.call("DELETE", f"/models/{MLP}")[0] == 200
            stop.set()
            for t in askers:
                t.join()
            assert set(statuses) <= {200, 404}, statuses
            assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 404
            assert MLP not in [m["model_id"] for m in c.call("GET", "/models")[1]["models"]]


def test_a_pinned_registration_serves_only_its_digest(tmp_path: Path) -> None:
    """``digest`` pins a registration: a wrong one is a 409 and loads nothing; after a republish
    with --force the pinned registration refuses the new copy, also when restored at a restart."""
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "m1" / "model.onnx", seed=1)
    write_mlp(tmp_path / "m2" / "model.onnx", seed=2)
    publish_dir_as(settings, MLP, tmp_path / "m1")
    first = published_digest(settings)
    with core_server(settings.publish_dir, tmp_path) as c:
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": "0" * 32})
        assert (status, body["code"]) == (409, "digest_mismatch") and first in body["message"], body
        assert c.call("GET", "/models")[1]["models"] == []
        for bad in ("abc", 7, "G" * 32):
            assert c.call("POST", "/models/register", {"model_id": MLP, "digest": bad})[0] == 400
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": first})
        assert status == 201 and body["digest"] == first, body
    publish_dir_as(settings, MLP, tmp_path / "m2", force=True)
    second = published_digest(settings)
    assert second != first
    with core_server(settings.publish_dir, tmp_path) as c:  # restores the pinned registration: refused
        status, ready, _ = c.call("GET", "/ready")
        assert status == 503 and "digest_mismatch" not in ready["failed"][MLP] and first in ready["failed"][MLP]
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 503
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP, "digest": second})
        assert status == 201 and body["digest"] == second  # the admin pins the new copy: served again
        assert c.call("POST", f"/models/{MLP}/inference", X)[0] == 200


def published_digest(settings: object) -> str:
    from axon.publish import published

    [row] = published(settings)  # type: ignore[arg-type]
    return str(row["digest"])
