"""``axon install … --export``: checkpoints without ONNX, from a local save_pretrained directory
and from a (local, real-protocol) Hub server, exported and checked against PyTorch at install;
the served numbers are then checked against the models' own libraries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from axon.errors import InvalidModelError
from axon.inference import LocalModel
from axon.install import install
from axon.settings import Settings
from axon.spec import parse_spec
from tests.support.classifier_models import Classifier
from tests.support.st_models import LONG, MIXED, STModel, assert_same_embeddings


def without_onnx(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx", "onnx"))
    return dst


def to_hub(hub: object, repo: str, src: Path) -> None:
    from tests.support.hub_server import FakeHub

    fake: FakeHub = hub[0]  # type: ignore[index]
    fake.add_commit(repo, {str(f.relative_to(src)): f.read_bytes() for f in src.rglob("*") if f.is_file()})


def check_provenance(result: Any, task: str) -> None:
    export = result.manifest.source["export"]
    assert export["task"] == task and export["max_abs_diff"] <= 1e-4, export
    assert export["torch"] and export["transformers"] and "torch.onnx.export" in export["exporter"]
    names = {f.path for f in result.manifest.files}
    assert "model.onnx" in names and not any(n.endswith(".safetensors") for n in names), names
    assert not (result.path / "model.safetensors").exists()  # only the export enters the cache


def test_a_local_cross_encoder_checkpoint_is_exported(axon_cli: Any, isolated_env: dict[str, str],
                                                      classifiers: dict[str, Classifier], tmp_path: Path) -> None:
    src = without_onnx(classifiers["ce-plain"].path, tmp_path / "ce")
    r = axon_cli("install", "clf/exported@1", "--from", str(src), "--export", timeout=300)
    assert r.code == 0, r.stderr
    result = install(parse_spec("clf/exported@1"), Settings.from_env(dict(os.environ)))  # already installed
    check_provenance(result, "text-classification")
    model = LocalModel(result.path, result.manifest, device="cpu")
    pairs = [("quick brown fox", t) for t in MIXED] + [(LONG, "a")]
    np.testing.assert_allclose(model.run(texts=pairs)["scores"].reshape(-1), classifiers["ce-plain"].predict(pairs),
                               rtol=1e-5, atol=1e-6)


def test_hub_checkpoints_are_exported_and_match_their_libraries(hub: object, st_models: dict[str, STModel],
                                                                classifiers: dict[str, Classifier],
                                                                tmp_path: Path) -> None:
    settings = Settings.from_env(dict(os.environ))
    to_hub(hub, "org/st-noonnx", without_onnx(st_models["mean-norm"].path, tmp_path / "st"))
    with pytest.raises(InvalidModelError, match="no ONNX export") as refused:  # without it: what to do
        install(parse_spec("hf/org/st-noonnx"), settings)
    assert refused.value.hint and "--export" in refused.value.hint
    st = install(parse_spec("hf/org/st-noonnx"), settings, export=True)
    check_provenance(st, "sentence-similarity")
    assert st.manifest.postprocessing and st.manifest.postprocessing["type"] == "pooling"
    assert_same_embeddings(LocalModel(st.path, st.manifest, device="cpu").run(texts=MIXED)["embeddings"],
                           st_models["mean-norm"].encode(MIXED))

    to_hub(hub, "org/clf-noonnx", without_onnx(classifiers["clf"].path, tmp_path / "clf"))
    clf = install(parse_spec("hf/org/clf-noonnx"), settings, export=True)
    check_provenance(clf, "text-classification")
    labels = (clf.manifest.postprocessing or {})["labels"]
    got = LocalModel(clf.path, clf.manifest, device="cpu").run(texts=MIXED)["scores"]
    for row, want in zip(got, classifiers["clf"].pipeline(MIXED, top_k=None), strict=True):
        by_label = {w["label"]: w["score"] for w in want}
        np.testing.assert_allclose(row, [by_label[label] for label in labels], rtol=1e-5, atol=1e-6)


def test_what_cannot_be_exported_is_refused(isolated_env: dict[str, str], classifiers: dict[str, Classifier],
                                            tmp_path: Path) -> None:
    settings = Settings.from_env(dict(os.environ))
    src = without_onnx(classifiers["clf"].path, tmp_path / "no-weights")
    (src / "model.safetensors").unlink()
    with pytest.raises(InvalidModelError, match=r"no model\.safetensors"):
        install(parse_spec("clf/x@1"), settings, from_=str(src), export=True)
    from axon.errors import UsageError

    with pytest.raises(UsageError, match="already holds an ONNX model"):
        install(parse_spec("clf/y@1"), settings, from_=str(classifiers["clf"].path), export=True)
    assert not (settings.cache_dir / "clf").exists()
