"""Sentence-transformers packages served by a real ``mlos-core serve``: pooling fused into the
graph (or in numpy where a prompt is left out of pooling) gives sentence-transformers' numbers.
One server for every model; the oracle is the library itself."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from axon.demo import sandbox_settings
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.st_models import (
    LONG,
    MIXED,
    MULTILINGUAL,
    SHORT,
    VARIANTS,
    STModel,
    assert_same_embeddings,
)


@pytest.fixture(scope="module")
def core(st_models: dict[str, STModel], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Core, dict]]:
    tmp = tmp_path_factory.mktemp("st-core")
    settings = sandbox_settings(tmp)
    for name, m in st_models.items():
        publish_dir_as(settings, f"st/{name}@1", m.path)
    with core_server(settings.publish_dir, tmp, "--max-batch-size", "32") as c:
        registered = {}
        for name in st_models:
            status, body, _ = c.call("POST", "/models/register", {"model_id": f"st/{name}@1"})
            assert status == 201, body
            registered[name] = body
        yield c, registered


def embed(c: Core, name: str, texts: list[str], **fields: Any) -> np.ndarray:
    status, body, _ = c.call("POST", f"/models/st/{name}@1/inference",
                             {"input": texts, "outputs": ["embeddings"], **fields})
    assert status == 200, body
    return np.asarray(body["outputs"]["embeddings"]["data"], np.float32)


def test_pooling_is_fused_into_the_graph(core: tuple[Core, dict]) -> None:
    _, registered = core
    notes = {name: body["runtime_notes"] or "" for name, body in registered.items()}
    assert "cls pooling in the graph" in notes["cls"]
    assert "max pooling in the graph" in notes["max-norm"]
    assert "mean pooling in the graph" in notes["mean"]
    assert "mean+cls+max pooling in the graph" in notes["concat"]
    assert "cls+mean pooling in the graph" in notes["legacy"]
    assert "weightedmean pooling" in notes["weighted"] and "lasttoken pooling" in notes["last-norm"]
    assert "mean pooling + 1 dense in the graph" in notes["dense"]
    assert "cls+max pooling + 2 dense in the graph" in notes["dense2"]
    assert "pooling" not in notes["prompts-excluded"]  # per-request prompt exclusion: numpy pooling


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_served_embeddings_match_the_library(name: str, core: tuple[Core, dict],
                                             st_models: dict[str, STModel]) -> None:
    c, _ = core
    oracle = st_models[name]
    for texts in (MIXED, SHORT, [MULTILINGUAL], [LONG]):
        assert_same_embeddings(embed(c, name, texts), oracle.encode(texts))


@pytest.mark.parametrize("name", ["prompts", "prompts-excluded"])
def test_served_prompts_match_the_library(name: str, core: tuple[Core, dict], st_models: dict[str, STModel]) -> None:
    c, _ = core
    oracle = st_models[name]
    for fields in ({}, {"prompt_name": "query"}, {"prompt_name": "passage"}, {"prompt": "Represent this: "},
                   {"prompt": ""}):
        assert_same_embeddings(embed(c, name, MIXED, **fields), oracle.encode(MIXED, **fields))


def test_concurrent_requests_with_different_prompts(core: tuple[Core, dict], st_models: dict[str, STModel]) -> None:
    c, _ = core
    oracle = st_models["prompts-excluded"]
    cases = [({"prompt_name": "query"}, [t]) for t in MIXED] + [({"prompt_name": "passage"}, [t]) for t in MIXED] \
        + [({}, [t]) for t in MIXED]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda case: embed(c, "prompts-excluded", case[1], **case[0]), cases * 2))
    for (fields, texts), emb in zip(cases * 2, got, strict=True):
        assert_same_embeddings(emb, oracle.encode(texts, **fields))


def test_bad_prompts_are_400(core: tuple[Core, dict]) -> None:
    c, _ = core
    url = "/models/st/prompts@1/inference"
    status, body, _ = c.call("POST", url, {"input": SHORT, "prompt_name": "nope"})
    assert status == 400 and body["code"] == "bad_prompt" and "not one of the model's prompts" in body["message"]
    status, body, _ = c.call("POST", url, {"input": SHORT, "prompt_name": "query", "prompt": "x"})
    assert status == 400 and body["code"] == "bad_prompt"
    status, body, _ = c.call("POST", url, {"input": SHORT, "prompt": 3})
    assert status == 400 and body["code"] == "bad_prompt"
    status, _, _ = c.call("POST", url, {"input": SHORT})  # the model still answers
    assert status == 200


def test_unimplemented_dense_activation_is_refused_at_install(st_models: dict[str, STModel], tmp_path: Path) -> None:
    from axon.errors import InvalidModelError
    from axon.install import install
    from axon.store.spec import parse_spec

    settings = sandbox_settings(tmp_path)
    src = next(iter(st_models.values())).path.parent / "dense-softsign"
    with pytest.raises(InvalidModelError, match="Softsign"):
        install(parse_spec("st/dense@1"), settings, from_=str(src))


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_fused_pooling_equals_the_numpy_reference(opset: int) -> None:
    """Every mode, concatenated, with Dense layers and normalisation, on masks with right and left
    padding: the appended nodes compute what axon.model.pooling.pool computes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from axon.model.pooling import POOLING_MODES, DenseLayer, pool, pooling_spec
    from axon.store.manifest import Manifest
    from mlos_core.graph_opt import fuse_pooling

    rng = np.random.default_rng(opset)
    hidden = rng.standard_normal((4, 7, 6)).astype(np.float32)
    mask = np.asarray([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0]], np.int64)
    dense = (DenseLayer(rng.standard_normal((5, 6 * 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32),
                        "gelu"),
             DenseLayer(rng.standard_normal((4, 5)).astype(np.float32), None, "sigmoid"))
    cases = [([m], norm, ()) for m in POOLING_MODES for norm in (False, True)]
    cases += [(["lasttoken", "mean", "weightedmean"], True, dense),
              (["max", "cls", "mean_sqrt_len_tokens"], False, dense[:1])]
    for modes, normalize, layers in cases:
        post: dict[str, Any] = {"type": "pooling", "modes": modes, "normalize": normalize,
                                "output": "last_hidden_state"}
        if layers:
            post["dense"] = [{"weights": f"{i}_Dense/model.safetensors", "in_features": d.weight.shape[1],
                              "out_features": d.weight.shape[0], "bias": d.bias is not None,
                              "activation": d.activation} for i, d in enumerate(layers)]
        graph = helper.make_graph(
            [helper.make_node("Identity", ["h"], ["last_hidden_state"])], "g",
            [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", "s", 6]),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
            [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 6])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        manifest = Manifest("t", "m", "1", {"type": "local"}, "model.onnx", opset, [], postprocessing=post)
        assert fuse_pooling(model, manifest, layers)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (got,) = sess.run(["embeddings"], {"h": hidden, "attention_mask": mask})
        want = pool(hidden, mask, pooling_spec(post), dense=layers)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{modes} {normalize} {len(layers)}")


def test_kserve_requests_choose_a_prompt_and_may_hold_more_texts_than_a_batch(
        core: tuple[Core, dict], st_models: dict[str, STModel]) -> None:
    c, _ = core
    oracle = st_models["prompts"]
    texts = [f"{MIXED[i % len(MIXED)]} {i}" for i in range(40)]  # --max-batch-size 32: two batches, one answer
    for params, kwargs in (({}, {}), ({"prompt_name": "passage"}, {"prompt_name": "passage"}),
                           ({"prompt": "Represent this: "}, {"prompt": "Represent this: "})):
        body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
                "outputs": [{"name": "embeddings"}], **({"parameters": params} if params else {})}
        status, answer, _ = c.call("POST", "/v2/models/st/prompts/versions/1/infer", body)
        assert status == 200, answer
        (out,) = answer["outputs"]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        assert_same_embeddings(got, oracle.encode(texts, **kwargs))
    status, answer, _ = c.call("POST", "/v2/models/st/prompts/versions/1/infer", {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
        "parameters": {"prompt_name": "nope"}})
    assert (status, answer["code"]) == (400, "bad_prompt")
