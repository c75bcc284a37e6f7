"""A sentence-transformers repository whose ONNX graph is the whole pipeline (it outputs
``sentence_embedding``, as optimum's sentence-transformers export does): served as is, by axon and
by MLOS Core (native and OpenAI routes), with the library's numbers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from axon.demo import sandbox_settings
from axon.install import install
from axon.model.inference import LocalModel
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.core_server import core_server, publish_dir_as
from tests.support.st_models import LONG, MIXED, MULTILINGUAL, STModel, assert_same_embeddings, quiet


def whole_pipeline_export(src: Path, dst: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx", "onnx"))
    with quiet():
        st = SentenceTransformer(str(src), device="cpu").eval()

        class Whole(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.st = st

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.st({"input_ids": input_ids, "attention_mask": attention_mask,
                                "token_type_ids": token_type_ids})["sentence_embedding"]

        ids = torch.tensor([[2, 40, 41, 42, 3], [2, 43, 3, 0, 0]], dtype=torch.long)
        dyn = {0: "batch", 1: "sequence"}
        whole = Whole().eval()
        torch.onnx.export(whole, (ids, (ids != 0).long(), torch.zeros_like(ids)), str(dst / "model.onnx"),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                                        "sentence_embedding": {0: "batch"}})
    return dst


@pytest.mark.usefixtures("isolated_env")
def test_a_graph_that_outputs_the_sentence_embedding_is_served_as_is(st_models: dict[str, STModel],
                                                                     tmp_path: Path) -> None:
    import os

    oracle = st_models["dense"]  # mean pooling, a Tanh Dense layer, Normalize: all inside the graph now
    src = whole_pipeline_export(oracle.path, tmp_path / "whole")
    r = install(parse_spec("st/whole@1"), Settings.from_env(dict(os.environ)), from_=str(src))
    assert r.manifest.postprocessing == {"type": "embedding_output", "output": "sentence_embedding",
                                         "source": "sentence-transformers"}
    texts = [*MIXED, MULTILINGUAL, LONG]
    assert_same_embeddings(LocalModel(r.path, r.manifest, device="cpu").run(texts=texts)["embeddings"],
                           oracle.encode(texts))

    settings = sandbox_settings(tmp_path / "core")
    publish_dir_as(settings, "st/whole@1", src)
    with core_server(settings.publish_dir, tmp_path / "core") as c:
        assert c.call("POST", "/models/register", {"model_id": "st/whole@1"})[0] == 201
        status, body, _ = c.call("POST", "/models/st/whole@1/inference", {"input": texts, "outputs": ["embeddings"]})
        assert status == 200, body
        assert_same_embeddings(body["outputs"]["embeddings"]["data"], oracle.encode(texts))
        status, body, _ = c.call("POST", "/v1/embeddings", {"model": "st/whole@1", "input": texts})
        assert status == 200, body
        assert_same_embeddings([d["embedding"] for d in body["data"]], oracle.encode(texts))
