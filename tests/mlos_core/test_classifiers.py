"""Cross-encoders and sequence classifiers, installed, published and served by a real
``mlos-core serve``: scores as ``CrossEncoder.predict`` computes them, labels as
``transformers.pipeline("text-classification")`` answers, through the native API and the TEI /
Cohere rerank routes. The oracles are the libraries, on the saved model directories."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from axon.demo import sandbox_settings
from axon.errors import InvalidModelError
from axon.install import install
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.classifier_models import Classifier
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.st_models import LONG, MIXED, MULTILINGUAL, SHORT, STModel

CROSS = ("ce", "ce-identity", "ce-plain")
CLASSIFIERS = ("clf", "clf-multi", "clf-regression")
QUERY = "quick brown fox"
DOCS = [*MIXED, "the lazy dog near the river bank", "中文 😀", "fox"]


@pytest.fixture(scope="module")
def core(classifiers: dict[str, Classifier], st_models: dict[str, STModel],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    tmp = tmp_path_factory.mktemp("clf-core")
    settings = sandbox_settings(tmp)
    for name, m in classifiers.items():
        publish_dir_as(settings, f"clf/{name}@1", m.path)
    publish_dir_as(settings, "st/cls@1", st_models["cls"].path)
    with core_server(settings.publish_dir, tmp, "--max-batch-size", "4") as c:
        for spec in [*(f"clf/{n}@1" for n in classifiers), "st/cls@1"]:
            status, body, _ = c.call("POST", "/models/register", {"model_id": spec})
            assert status == 201, body
        yield c
    assert "Traceback" not in c.log.read_text()


def call(c: Core, path: str, body: dict[str, Any], status: int = 200) -> Any:
    got, answer, _ = c.call("POST", path, body)
    assert got == status, answer
    return answer


def close(got: Any, expected: Any) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=1e-5, atol=1e-6)


def test_the_manifest_says_what_the_library_does(core: Core) -> None:
    want = {"ce": ("cross-encoder", "sigmoid"), "ce-identity": ("cross-encoder", "none"),
            "ce-plain": ("text-classification", "sigmoid"), "clf": ("text-classification", "softmax"),
            "clf-multi": ("text-classification", "sigmoid"), "clf-regression": ("text-classification", "none")}
    repo = Path(core.call("GET", "/health")[1]["repository"])
    for name, (task, function) in want.items():
        assert core.call("GET", f"/models/clf/{name}@1")[1]["postprocessing"] == "classification"
        text = (repo / "clf" / name / "1" / "manifest.yaml").read_text()
        assert f"task: {task}" in text and f"function: {function}" in text, (name, text)


@pytest.mark.parametrize("name", CROSS)
def test_cross_encoder_scores_match_the_library(name: str, core: Core, classifiers: dict[str, Classifier]) -> None:
    oracle = classifiers[name]
    for docs in (DOCS, SHORT, [MULTILINGUAL], [LONG], [LONG + " " + LONG, "a"]):
        pairs = [(QUERY if i % 2 else LONG, d) for i, d in enumerate(docs)]
        expected = oracle.predict(pairs)
        answer = call(core, f"/models/clf/{name}@1/inference", {"input": [list(p) for p in pairs]})
        close(np.asarray(answer["outputs"]["scores"]["data"]).reshape(-1), expected)
        same_query = call(core, f"/models/clf/{name}@1/inference", {"query": QUERY, "documents": docs})
        close(np.asarray(same_query["outputs"]["scores"]["data"]).reshape(-1),
              oracle.predict([(QUERY, d) for d in docs]))


def test_tei_rerank_matches_the_library(core: Core, classifiers: dict[str, Classifier]) -> None:
    import torch

    oracle = classifiers["ce"]
    expected = oracle.predict([(QUERY, d) for d in DOCS])
    answer = call(core, "/rerank", {"model": "clf/ce@1", "query": QUERY, "texts": DOCS})
    assert sorted(a["index"] for a in answer) == list(range(len(DOCS)))
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)
    close([a["score"] for a in sorted(answer, key=lambda a: a["index"])], expected)
    assert "text" not in answer[0]
    raw = call(core, "/rerank", {"model": "clf/ce", "query": QUERY, "texts": DOCS, "raw_scores": True,
                                 "return_text": True, "truncate": True})
    with torch.no_grad():
        logits = oracle._lib.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())
    close([a["score"] for a in sorted(raw, key=lambda a: a["index"])], logits)
    assert all(a["text"] == DOCS[a["index"]] for a in raw)


def test_cohere_rerank_matches_the_library(core: Core, classifiers: dict[str, Classifier]) -> None:
    oracle = classifiers["ce-plain"]
    docs = [*DOCS, *(f"{d} again" for d in DOCS)]  # more documents than a batch holds: split, answered as one
    expected = oracle.predict([(QUERY, d) for d in docs])
    answer = call(core, "/v1/rerank", {"model": "clf/ce-plain@1", "query": QUERY, "top_n": 3,
                                       "documents": [d if i % 2 else {"text": d} for i, d in enumerate(docs)]})
    best = np.argsort(-expected, kind="stable")[:3]
    assert [r["index"] for r in answer["results"]] == best.tolist()
    close([r["relevance_score"] for r in answer["results"]], expected[best])
    assert all(r["document"]["text"] == docs[r["index"]] for r in answer["results"])
    assert answer["model"] == "clf/ce-plain@1" and answer["id"] and answer["usage"]["total_tokens"] > len(docs)
    bare = call(core, "/v1/rerank", {"model": "clf/ce-plain@1", "query": QUERY, "documents": docs,
                                     "return_documents": False})
    assert len(bare["results"]) == len(docs) and "document" not in bare["results"][0]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_labels_match_the_pipeline(name: str, core: Core, classifiers: dict[str, Classifier]) -> None:
    oracle = classifiers[name]
    for texts in (MIXED, SHORT, [MULTILINGUAL], [LONG]):
        every = call(core, f"/models/clf/{name}@1/inference", {"input": texts, "top_k": None})
        for got, want in zip(every["labels"], oracle.pipeline(texts, top_k=None), strict=True):
            assert [g["label"] for g in got] == [w["label"] for w in want]
            close([g["score"] for g in got], [w["score"] for w in want])
        top = call(core, f"/models/clf/{name}@1/inference", {"input": texts})  # the pipeline's default: the best one
        for got, want in zip(top["labels"], oracle.pipeline(texts), strict=True):
            assert len(got) == 1 and got[0]["label"] == want["label"]
            close(got[0]["score"], want["score"])
        two = call(core, f"/models/clf/{name}@1/inference", {"input": texts, "top_k": 2})
        for got, want in zip(two["labels"], oracle.pipeline(texts, top_k=2), strict=True):
            assert [g["label"] for g in got] == [w["label"] for w in want]


def test_wrong_requests_get_a_clear_400(core: Core) -> None:
    cases = [
        ("/models/st/cls@1/inference", {"input": [["a", "b"]]}, "pairs_not_supported"),
        ("/models/clf/ce@1/inference", {"input": [["a", "b"], "c"]}, "bad_input"),
        ("/models/clf/ce@1/inference", {"query": "q"}, "bad_input"),
        ("/models/clf/ce@1/inference", {"input": [["a", "b"]], "prompt": "x"}, "bad_prompt"),
        ("/models/clf/clf@1/inference", {"input": "a", "top_k": 0}, "bad_request"),
        ("/rerank", {"query": QUERY, "texts": DOCS}, "model_required"),  # three rerankers are registered
        ("/v1/rerank", {"model": "clf/clf@1", "query": QUERY, "documents": DOCS}, "not_a_reranker"),
        ("/v1/rerank", {"model": "st/cls@1", "query": QUERY, "documents": DOCS}, "not_a_reranker"),
        ("/v1/rerank", {"model": "clf/ce@1", "query": QUERY, "documents": []}, "bad_input"),
        ("/v1/rerank", {"model": "clf/ce@1", "query": QUERY, "documents": DOCS, "top_n": 0}, "bad_request"),
    ]
    for path, body, code in cases:
        assert call(core, path, body, 400)["code"] == code, (path, body)
    assert call(core, "/v1/rerank", {"model": "clf/nope@1", "query": "q", "documents": ["d"]}, 404)["code"] == \
        "model_not_found"


def test_an_unimplemented_cross_encoder_activation_is_refused_at_install(
        classifiers: dict[str, Classifier], settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "relu"
    shutil.copytree(classifiers["ce"].path, src)
    cfg_file = src / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["activation_fn"] = "torch.nn.modules.activation.ReLU"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(InvalidModelError, match=r"activation 'torch\.nn\.modules\.activation\.ReLU'"):
        install(parse_spec("clf/relu@1"), settings, from_=str(src))
    assert not (settings.cache_dir / "clf" / "relu").exists()


def test_review_cases_are_refused_or_ranked_right(core: Core, classifiers: dict[str, Classifier],
                                                  settings: Settings, tmp_path: Path) -> None:
    from mlos_core.wire import MAX_REQUEST_CHARS

    # a small request that would take a batcher half a minute: the query is tokenized per document
    huge = "fox " * (MAX_REQUEST_CHARS // 64)
    assert call(core, "/v1/rerank", {"model": "clf/ce@1", "query": huge, "documents": ["a"] * 20}, 400)["code"] == \
        "text_too_large"
    assert call(core, "/models/clf/ce@1/inference", {"query": huge, "documents": ["a"] * 20}, 400)["code"] == \
        "text_too_large"
    # a cross-encoder with prompts: not applied to pairs here, so refused at install (never wrong scores)
    src = tmp_path / "ce-prompts"
    shutil.copytree(classifiers["ce"].path, src)
    cfg_file = src / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(prompts={"query": "query: "}, default_prompt_name="query")
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(InvalidModelError, match="has prompts"):
        install(parse_spec("clf/prompted@1"), settings, from_=str(src))


def test_a_bundled_classification_manifest_that_does_not_fit_the_graph_is_refused(
        classifiers: dict[str, Classifier], settings: Settings, tmp_path: Path) -> None:
    import yaml

    for bad, match in (({"labels": ["a", "b"]}, "3 columns but the manifest names 2 labels"),
                       ({"output": "nope"}, "is not an output of the graph"),
                       ({"function": "gelu"}, "function 'gelu'"), ({"labels": [0, 1, 2]}, "list of strings")):
        src = tmp_path / f"bundled-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(classifiers["clf"].path, src)
        post = {"type": "classification", "task": "text-classification", "function": "softmax",
                "labels": ["negative", "neutral", "positive"], "output": "logits", **bad}
        (src / "manifest.yaml").write_text(yaml.safe_dump({"spec": {"postprocessing": post}}))
        with pytest.raises(InvalidModelError, match=match):
            install(parse_spec("clf/bundled@1"), settings, from_=str(src), force=True)
