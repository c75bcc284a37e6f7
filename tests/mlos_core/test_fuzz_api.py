"""Property-based fuzzing of MLOS Core's request parsing against one live server (issue #11, item 8).

Generated requests for the native JSON API (``POST /models/{id}/inference``), the KServe JSON body
and the KServe binary framing (``Inference-Header-Content-Length``), and the admin routes, mixing
valid requests (which run real inference) with every kind of malformed field. Every answer must be
2xx, or 4xx with the JSON error shape ``{"status": "error", "code", "message"}``; the server log
must hold no traceback.

Profiles (Hypothesis settings):

* default ``mlos-fuzz``: 300 examples per strategy, derandomized, no example database: the same
  few thousand requests each run, a few seconds in all;
* ``HYPOTHESIS_PROFILE=nightly``: 20,000 examples per strategy with fresh random seeds, e.g.
  ``HYPOTHESIS_PROFILE=nightly .venv/bin/python -m pytest tests/mlos_core/test_fuzz_api.py``.

``FUZZ_STATS=1`` (with ``-s``) prints how many answers had each status and error code, to check
that the strategies still reach the models (about a fifth of the answers are 200s).
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.core_server import Core
from tests.support.served import MLP, TEXT

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("mlos-fuzz", max_examples=300, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_CHECKS, print_blob=False)
settings.register_profile("nightly", max_examples=20_000, deadline=None, database=None,
                          suppress_health_check=_CHECKS)
FUZZ = settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "mlos-fuzz")))


class Client:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, core: Core) -> None:
        host, port = core.url.removeprefix("http://").split(":")
        self.host, self.port, self.token = host, int(port), core.token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             *, admin: bool = False) -> tuple[int, bytes]:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if admin:
            hdrs["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                payload = resp.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt == 2:
                    raise
                continue
            if resp.getheader("connection", "").lower() == "close":
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            return resp.status, payload
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def client(core: Core) -> Iterator[Client]:
    c = Client(core)
    yield c
    c.close()


SEEN: dict[str, int] = {}


def check_answer(status: int, payload: bytes, what: Any) -> None:
    if os.environ.get("FUZZ_STATS"):
        key = f"{status} {json.loads(payload)['code'] if status >= 400 else ''}"
        SEEN[key] = SEEN.get(key, 0) + 1
    assert 200 <= status < 300 or 400 <= status < 500, (status, payload[:300], repr(what)[:500])
    if status >= 400:
        err = json.loads(payload)
        assert err["status"] == "error" and isinstance(err["code"], str) and err["code"], err
        assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"], err


def assert_clean_log(core: Core) -> None:
    text = core.log.read_text(errors="replace")
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]


# --- strategies -----------------------------------------------------------------------------------------

leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12))
json_values = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=4), max_leaves=12)
numbers = st.one_of(st.integers(-100, 100), st.floats(-1e6, 1e6, allow_nan=False), st.booleans(),
                    st.sampled_from([2**63, -(2**63) - 1, 1e39, 0.5]))
junk = st.one_of(json_values, st.text(max_size=8))


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN/Infinity and huge integers included: the server must refuse them


def mlp_rows(min_rows: int = 1, max_rows: int = 20) -> st.SearchStrategy[list[list[Any]]]:
    row = st.one_of(st.lists(numbers, min_size=4, max_size=4), st.lists(numbers | junk, max_size=6))
    return st.lists(row, min_size=min_rows, max_size=max_rows)


native_tensor_body = st.fixed_dictionaries(
    {"inputs": st.dictionaries(st.sampled_from(["x", "z", "input_ids", ""]), st.one_of(mlp_rows(), junk),
                               max_size=2)},
    optional={"outputs": st.one_of(st.lists(st.sampled_from(["y", "embeddings", "nope"]), max_size=3), junk)})
native_text_body = st.fixed_dictionaries(
    {"input": st.one_of(st.text(max_size=60), st.lists(st.text(max_size=40), max_size=20), junk)},
    optional={"outputs": st.one_of(st.lists(st.sampled_from(["embeddings", "last_hidden_state", "x"]),
                                            max_size=2), junk)})
valid_native = st.builds(lambda rows: {"inputs": {"x": rows}}, st.lists(st.lists(st.floats(-10, 10), min_size=4,
                                                                                 max_size=4), min_size=1,
                                                                        max_size=16))
valid_text = st.builds(lambda t: {"input": t}, st.one_of(st.text(max_size=80),
                                                       st.lists(st.text(max_size=40), min_size=1, max_size=16)))
native_bodies = st.one_of(valid_native, valid_native, valid_text, valid_text, native_tensor_body, native_text_body,
                          json_values.map(lambda v: {"x": v}), json_values)
model_paths = st.one_of(st.just(MLP), st.just(MLP), st.just(TEXT), st.just(TEXT),
                        st.just(urllib.parse.quote(MLP, safe="")),
                        st.sampled_from(["demo/nope@1", "demo/mlp@2", "demo%252Fmlp%25401", "../etc/passwd",
                                         "demo/mlp", "", "demo/mlp@1/x"]),
                        st.text(max_size=20).map(lambda t: urllib.parse.quote(t, safe="/@")))


@st.composite
def raw_body(draw: st.DrawFn, bodies: st.SearchStrategy[Any]) -> bytes:
    raw = dumps(draw(bodies))
    how = draw(st.sampled_from(["whole"] * 6 + ["truncated", "garbage", "latin1"]))
    if how == "truncated":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "garbage":
        return draw(st.binary(max_size=80))
    if how == "latin1":
        return raw.replace(b'"', b'"\xe9', 1)
    return raw


dims = st.one_of(st.integers(0, 5), st.integers(-3, -1), st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**64]))
shapes = st.one_of(st.lists(dims, max_size=4), st.just([1, 4]), st.lists(st.just(1), min_size=63, max_size=66),
                   junk)
datatypes = st.one_of(st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL", "UINT8", "INT8", "FP64", "fp32"]),
                      junk)
kserve_params = st.one_of(st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 40) | junk,
                                                              "binary_data": junk}), junk)
kserve_input = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["x", "text", "z"]), junk), "datatype": datatypes, "shape": shapes,
    "data": st.one_of(st.lists(numbers | st.text(max_size=6), max_size=12), mlp_rows(max_rows=3), junk),
    "parameters": kserve_params})
valid_kserve_input = st.builds(lambda n, vals: {"name": "x", "datatype": "FP32", "shape": [n, 4],
                                                "data": vals[: 4 * n]},
                               st.integers(1, 4), st.lists(st.floats(-5, 5), min_size=16, max_size=16))
valid_text_input = st.builds(lambda ts: {"name": "text", "datatype": "BYTES", "shape": [len(ts)], "data": ts},
                             st.lists(st.text(max_size=30), min_size=1, max_size=4))
kserve_outputs = st.one_of(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "embeddings", "q"]) | junk},
                                                          optional={"parameters": kserve_params}), max_size=2), junk)
kserve_bodies = st.one_of(
    st.fixed_dictionaries({"inputs": st.one_of(st.tuples(valid_kserve_input), st.tuples(valid_text_input),
                                               st.lists(st.one_of(valid_kserve_input, valid_text_input, kserve_input),
                                                        max_size=3)).map(list)},
                          optional={"outputs": kserve_outputs, "id": junk,
                                    "parameters": st.one_of(st.fixed_dictionaries(
                                        {}, optional={"binary_data_output": junk}), junk)}),
    json_values)
kserve_paths = st.one_of(st.sampled_from(["/v2/models/demo/mlp/versions/1/infer", "/v2/models/demo/mlp/infer"]),
                         st.sampled_from(["/v2/models/demo/enc/versions/1/infer", "/v2/models/demo/enc/infer"]),
                         st.sampled_from(["/v2/models/demo/nope/infer", "/v2/models/demo%252Fmlp/infer",
                                          "/v2/models/demo/mlp/versions/9/infer", "/v2/models//infer"]))


def bytes_elements(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(path, body, Inference-Header-Content-Length): a well-framed request, in half the cases with
    some of its fields (sizes, shapes, elements, header length, path) replaced by hostile ones."""
    mutate = draw(st.booleans())

    def pick(valid: Any, hostile: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.just(valid), hostile)) if mutate else valid

    kind = draw(st.sampled_from(["fp32", "text"]))
    inputs, blobs = [], []
    for _ in range(pick(1, st.integers(0, 3))):
        if kind == "fp32":
            n = draw(st.integers(1, 3))
            size = pick(16 * n, st.one_of(st.integers(-4, 70), junk))
            inputs.append({"name": "x", "datatype": pick("FP32", datatypes), "shape": pick([n, 4], shapes),
                           "parameters": pick({"binary_data_size": size}, kserve_params)})
            fits = isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= 70
            blobs.append(draw(st.binary(min_size=size, max_size=size)) if fits else draw(st.binary(max_size=20)))
        else:
            texts = draw(st.lists(st.text(max_size=20), min_size=1, max_size=3))
            blob = pick(bytes_elements(texts), st.one_of(st.binary(max_size=30), st.just(bytes_elements(texts)[:-1]),
                                                         st.just(struct.pack("<I", 0xFFFFFFFF) + b"abc"),
                                                         st.just(struct.pack("<I", 2) + b"\xff\xfe")))
            inputs.append({"name": pick("text", st.sampled_from(["x", "TEXT"])), "datatype": pick("BYTES", datatypes),
                           "shape": pick([len(texts)], shapes),
                           "parameters": {"binary_data_size": pick(len(blob), st.one_of(st.integers(-2, 40), junk))}})
            blobs.append(blob)
    if mutate and draw(st.booleans()):
        inputs.append(draw(kserve_input))
        blobs.append(draw(st.binary(max_size=24)))
    head: dict[str, Any] = {"inputs": inputs}
    if kind == "fp32" and draw(st.booleans()):
        head["outputs"] = pick([{"name": "y", "parameters": {"binary_data": True}}], kserve_outputs)
    if draw(st.booleans()):
        head["parameters"] = pick({"binary_data_output": True}, kserve_params)
    raw_head = dumps(head)
    body = raw_head + b"".join(blobs) + pick(b"", st.binary(max_size=8))
    header = pick(str(len(raw_head)), st.one_of(st.integers(-3, len(body) + 5).map(str),
                                                st.text(alphabet="0123456789+-_ .eE", max_size=6), st.just("9" * 30)))
    path = "/v2/models/demo/mlp/versions/1/infer" if kind == "fp32" else "/v2/models/demo/enc/infer"
    return pick(path, kserve_paths), body, header


# --- the properties -----------------------------------------------------------------------------------------


@FUZZ
@given(path=model_paths, body=raw_body(native_bodies))
def test_native_json_api_never_fails_the_server(client: Client, core: Core, path: str, body: bytes) -> None:
    status, payload = client.send("POST", f"/models/{path}/inference", body)
    check_answer(status, payload, (path, body))


@FUZZ
@given(path=kserve_paths, body=raw_body(kserve_bodies))
def test_kserve_json_never_fails_the_server(client: Client, core: Core, path: str, body: bytes) -> None:
    status, payload = client.send("POST", path, body)
    check_answer(status, payload, (path, body))


@FUZZ
@given(request=binary_requests())
def test_kserve_binary_framing_never_fails_the_server(client: Client, core: Core,
                                                      request: tuple[str, bytes, str]) -> None:
    path, body, header = request
    status, payload = client.send("POST", path, body, {"Inference-Header-Content-Length": header,
                                                       "Content-Type": "application/octet-stream"})
    check_answer(status, payload, (path, request))


admin_bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"model_id": st.one_of(st.sampled_from([MLP, "demo/nope@1", "../x@1",
                                                                               "demo/mlp", "demo/mlp@latest"]), junk),
                                        "manifest_path": st.one_of(st.sampled_from(["demo/mlp/1", "/etc", "..",
                                                                                    "demo/mlp/1/manifest.yaml"]),
                                                                   junk),
                                        "path": junk, "model_path": junk}),
    st.fixed_dictionaries({}, optional={"parameters": st.one_of(
        st.fixed_dictionaries({}, optional={"version": st.one_of(st.sampled_from(["1", "latest", "9", ""]), junk)}),
        junk)}),
    json_values)


@FUZZ
@given(route=st.sampled_from(["register", "load", "get", "delete", "v2-get"]), name=model_paths,
       body=raw_body(admin_bodies))
def test_admin_routes_never_fail_the_server(client: Client, core: Core, route: str, name: str, body: bytes) -> None:
    if route == "register":
        status, payload = client.send("POST", "/models/register", body, admin=True)
    elif route == "load":
        status, payload = client.send("POST", f"/v2/repository/models/{name}/load", body, admin=True)
    elif route == "delete":
        if urllib.parse.unquote(name) in (MLP, TEXT):
            return  # the fuzzed server keeps its models
        status, payload = client.send("DELETE", f"/models/{name}", admin=True)
    elif route == "get":
        status, payload = client.send("GET", f"/models/{name}")
    else:
        status, payload = client.send("GET", f"/v2/models/{name}")
    check_answer(status, payload, (route, name, body))


def test_the_fuzzed_server_logged_no_traceback_and_still_serves(client: Client, core: Core) -> None:
    status, payload = client.send("POST", f"/models/{MLP}/inference", dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    assert status == 200, payload
    assert_clean_log(core)
    if SEEN:
        print(sorted(SEEN.items(), key=lambda kv: -kv[1]))


# --- the OpenAI, rerank and pair-input routes -------------------------------------------------------------

texts = st.one_of(st.text(max_size=40), st.lists(st.text(max_size=30), max_size=6), junk)
openai_bodies = st.one_of(
    st.fixed_dictionaries({"model": st.one_of(st.sampled_from([TEXT, "demo/enc", MLP, "demo/nope@1", ""]), junk),
                           "input": st.one_of(texts, st.lists(st.integers(-5, 5), max_size=4),
                                              st.lists(st.lists(st.integers(0, 9), max_size=3), max_size=3))},
                          optional={"encoding_format": st.one_of(st.sampled_from(["float", "base64", "int8"]), junk),
                                    "dimensions": st.one_of(st.integers(-2, 70), junk), "user": junk}),
    json_values)
rerank_bodies = st.one_of(
    st.fixed_dictionaries({"query": st.one_of(st.text(max_size=30), junk),
                           "texts": st.one_of(st.lists(st.text(max_size=20), max_size=5), junk),
                           "documents": st.one_of(st.lists(st.one_of(st.text(max_size=20), st.fixed_dictionaries(
                               {"text": st.one_of(st.text(max_size=10), junk)})), max_size=5), junk)},
                          optional={"model": st.one_of(st.sampled_from([TEXT, MLP, "demo/enc"]), junk),
                                    "top_n": st.one_of(st.integers(-2, 9), junk), "raw_scores": junk,
                                    "return_text": junk, "return_documents": junk, "truncate": junk}),
    json_values)
pair_bodies = st.one_of(
    st.fixed_dictionaries({"input": st.lists(st.one_of(st.lists(st.text(max_size=12), min_size=2, max_size=2),
                                                       st.text(max_size=12), junk), min_size=1, max_size=4)},
                          optional={"top_k": junk, "prompt": junk}),
    st.fixed_dictionaries({"query": junk, "documents": st.one_of(st.lists(st.text(max_size=12), max_size=4), junk)},
                          optional={"input": junk}))


@FUZZ
@given(body=raw_body(openai_bodies))
def test_openai_embeddings_never_fail_the_server(client: Client, core: Core, body: bytes) -> None:
    status, payload = client.send("POST", "/v1/embeddings", body)
    assert 200 <= status < 300 or 400 <= status < 500, (status, payload[:300], body[:300])
    if status >= 400:  # OpenAI's error shape, so that its clients raise their usual errors
        err = json.loads(payload)["error"]
        assert err["type"] and isinstance(err["code"], str) and err["message"] and "\n" not in err["message"], err
    else:
        answer = json.loads(payload)
        assert answer["object"] == "list" and answer["usage"]["prompt_tokens"] > 0


@FUZZ
@given(path=st.sampled_from(["/rerank", "/v1/rerank"]), body=raw_body(rerank_bodies))
def test_rerank_routes_never_fail_the_server(client: Client, core: Core, path: str, body: bytes) -> None:
    status, payload = client.send("POST", path, body)
    check_answer(status, payload, (path, body))
    assert status >= 400  # this server has no cross-encoder: every request is refused, clearly


@FUZZ
@given(path=model_paths, body=raw_body(pair_bodies))
def test_text_pairs_never_fail_the_server(client: Client, core: Core, path: str, body: bytes) -> None:
    status, payload = client.send("POST", f"/models/{path}/inference", body)
    check_answer(status, payload, (path, body))
