"""``axon validate --reference library``: the package's outputs against its own library
(sentence-transformers, transformers) on sample texts, through the real CLI. A package whose
graph no longer matches its weights fails, naming the output and the difference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.classifier_models import Classifier
from tests.support.st_models import STModel


def validate(axon_cli: Any, spec: str, src: Path) -> tuple[int, dict[str, Any], str]:
    r = axon_cli("install", spec, "--from", str(src))
    assert r.code == 0, r.stderr
    r = axon_cli("validate", spec, "--reference", "library", "--seconds", "0.05", "--json", timeout=300)
    return r.code, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


@pytest.mark.usefixtures("isolated_env")
def test_each_kind_of_package_matches_its_library(axon_cli: Any, st_models: dict[str, STModel],
                                                  classifiers: dict[str, Classifier], tmp_path: Path) -> None:
    bare = tmp_path / "bare"  # a plain transformers save_pretrained with its ONNX export: last_hidden_state
    base = st_models["cls"].path.parent / "base"
    shutil.copytree(base / "hf", bare)
    shutil.copyfile(base / "model.onnx", bare / "model.onnx")
    cases = {"st/mean-norm@1": (st_models["mean-norm"].path, "embeddings", "SentenceTransformer.encode"),
             "st/concat@1": (st_models["concat"].path, "embeddings", "SentenceTransformer.encode"),
             "clf/ce@1": (classifiers["ce"].path, "scores", "CrossEncoder.predict"),
             "clf/clf@1": (classifiers["clf"].path, "scores", "text-classification"),
             "enc/bare@1": (bare, "last_hidden_state", "BertModel")}
    for spec, (src, output, library) in cases.items():
        code, report, stderr = validate(axon_cli, spec, src)
        assert code == 0, (spec, stderr, report.get("accuracy"))
        acc = report["accuracy"]
        assert acc["passed"] and library in acc["source"] and set(acc["outputs"]) == {output}, (spec, acc)
        assert acc["outputs"][output]["max_abs_diff"] < 1e-4, (spec, acc)
        cos = acc["outputs"][output]["min_cosine"]
        assert cos is None if output == "scores" and spec == "clf/ce@1" else cos > 0.9999, (spec, acc)


@pytest.mark.usefixtures("isolated_env")
def test_a_graph_that_no_longer_matches_its_weights_fails(axon_cli: Any, st_models: dict[str, STModel],
                                                          tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "drifted"
    shutil.copytree(st_models["mean-norm"].path, src)
    weights = load_file(src / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name] * 1.5  # the library's weights moved on; the ONNX export did not
    save_file(weights, src / "model.safetensors")
    code, report, _ = validate(axon_cli, "st/drifted@1", src)
    assert code == 1 and not report["accuracy"]["passed"]
    assert any(f.startswith("embeddings: max abs diff") for f in report["accuracy"]["failures"])


@pytest.mark.usefixtures("isolated_env")
def test_no_weights_and_no_source_to_load_them_from_is_a_clear_error(axon_cli: Any, classifiers: dict[str, Classifier],
                                                                     tmp_path: Path) -> None:
    src = tmp_path / "onnx-only"
    shutil.copytree(classifiers["clf"].path, src)
    (src / "model.safetensors").unlink()
    code, _, stderr = validate(axon_cli, "clf/onnx-only@1", src)
    assert code == 2 and "holds no PyTorch weights" in stderr and "--reference FILE" in stderr
    r = axon_cli("validate", "clf/onnx-only@1", "--reference", str(tmp_path / "nope.json"))
    assert r.code == 2 and "is not a file" in r.stderr
