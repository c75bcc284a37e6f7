"""``POST /v1/embeddings`` and ``GET /v1/models`` through the real ``openai`` client pointed at a real
``mlos-core serve`` on 127.0.0.1. The oracle is sentence-transformers on the same tiny models:
its ``encode`` for the vectors, its own ``tokenize`` for the usage counts."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator

import numpy as np
import pytest

from axon.demo import sandbox_settings
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.st_models import LONG, MIXED, MULTILINGUAL, SHORT, STModel, assert_same_embeddings

openai = pytest.importorskip("openai")

MODELS = ("mean-norm", "prompts", "cls", "prompts-excluded")  # the last: pooling in numpy, not the graph


@pytest.fixture(scope="module")
def core(st_models: dict[str, STModel], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    tmp = tmp_path_factory.mktemp("openai-core")
    settings = sandbox_settings(tmp)
    for name in MODELS:
        publish_dir_as(settings, f"st/{name}@1", st_models[name].path)
    with core_server(settings.publish_dir, tmp, "--max-batch-size", "8") as c:
        for name in MODELS:
            status, body, _ = c.call("POST", "/models/register", {"model_id": f"st/{name}@1"})
            assert status == 201, body
        yield c
    assert "Traceback" not in c.log.read_text()


@pytest.fixture(scope="module")
def client(core: Core) -> Iterator[object]:
    with openai.OpenAI(base_url=f"{core.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def library_tokens(model: STModel, texts: list[str]) -> int:
    """What sentence-transformers feeds the transformer for *texts* (its truncation, its prompt)."""
    prompt = model.library.prompts.get(model.library.default_prompt_name or "", "")
    return int(model.library.tokenize([prompt + t for t in texts])["attention_mask"].sum())


@pytest.mark.parametrize("name", MODELS)
def test_the_openai_client_gets_the_library_s_embeddings_and_token_counts(
        name: str, client: object, st_models: dict[str, STModel]) -> None:
    oracle = st_models[name]
    for texts in (MIXED, SHORT, [MULTILINGUAL], [LONG]):
        for fmt in ("base64", "float"):  # base64: what the client asks for unless told otherwise
            kwargs = {} if fmt == "base64" else {"encoding_format": "float"}
            resp = client.embeddings.create(model=f"st/{name}@1", input=texts, **kwargs)  # type: ignore[attr-defined]
            assert [d.index for d in resp.data] == list(range(len(texts)))
            assert_same_embeddings([d.embedding for d in resp.data], oracle.encode(texts))
            assert resp.model == f"st/{name}@1"
            assert resp.usage.prompt_tokens == resp.usage.total_tokens == library_tokens(oracle, texts)


def test_more_texts_than_a_batch_are_answered_as_one(client: object, st_models: dict[str, STModel]) -> None:
    texts = [f"{MIXED[i % len(MIXED)]} #{i}" for i in range(29)]  # batches of 8: four of them, the last short
    resp = client.embeddings.create(model="st/mean-norm", input=texts)  # type: ignore[attr-defined]
    assert resp.model == "st/mean-norm@1"  # the version registered last, named without it
    assert_same_embeddings([d.embedding for d in resp.data], st_models["mean-norm"].encode(texts))
    assert resp.usage.prompt_tokens == library_tokens(st_models["mean-norm"], texts)


def test_a_large_request_goes_through_the_parse_helper(core: Core, st_models: dict[str, STModel]) -> None:
    texts = [f"{LONG} {i}" for i in range(2048)]  # about 800 KB of JSON: parsed outside the event loop
    body = json.dumps({"model": "st/cls@1", "input": texts, "encoding_format": "base64"}).encode()
    status, answer, _ = core.call("POST", "/v1/embeddings", raw=body)
    assert status == 200, answer
    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in answer["data"]]
    assert_same_embeddings(got, st_models["cls"].encode(texts))


def test_dimensions_must_be_the_model_s_own(client: object, st_models: dict[str, STModel]) -> None:
    width = st_models["cls"].encode(["x"]).shape[1]
    resp = client.embeddings.create(model="st/cls@1", input="x", dimensions=width)  # type: ignore[attr-defined]
    assert len(resp.data[0].embedding) == width
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="st/cls@1", input="x", dimensions=width // 2)  # type: ignore[attr-defined]
    assert err.value.code == "dimensions_not_supported" and str(width) in err.value.message


def test_errors_are_raised_by_the_client_as_openai_errors(client: object) -> None:
    cases = [({"model": "st/nope@1", "input": "x"}, openai.NotFoundError, "model_not_found"),
             ({"model": "st/cls@1", "input": [[101, 2023]]}, openai.BadRequestError, "token_ids_unsupported"),
             ({"model": "st/cls@1", "input": []}, openai.BadRequestError, "bad_input"),
             ({"model": "st/cls@1", "input": "x", "encoding_format": "int8"}, openai.BadRequestError,
              "bad_encoding_format")]
    for kwargs, error, code in cases:
        with pytest.raises(error) as err:
            client.embeddings.create(**kwargs)  # type: ignore[attr-defined]
        assert err.value.code == code, err.value


def test_malformed_bodies_get_an_openai_shaped_400(core: Core) -> None:
    host, port = core.url.removeprefix("http://").split(":")
    for raw in (b"{not json", b"[1, 2]", b'{"input": "no model"}', b'{"model": "st/cls@1", "input": "x", '
                b'"dimensions": true}'):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/embeddings", body=raw, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        error = json.loads(resp.read())["error"]
        conn.close()
        assert resp.status == 400 and error["type"] == "invalid_request_error", (raw, error)
        assert error["code"] and error["message"]


def test_models_are_listed(client: object) -> None:
    ids = {m.id for m in client.models.list()}  # type: ignore[attr-defined]
    assert ids == {f"st/{name}@1" for name in MODELS}


def test_other_methods_get_405(core: Core) -> None:
    for path in ("/v1/embeddings", "/rerank", "/v1/rerank"):
        status, body, _ = core.call("GET", path)
        assert (status, body["code"]) == (405, "method_not_allowed"), (path, body)
