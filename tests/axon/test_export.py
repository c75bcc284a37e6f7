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
from axon.install import install
from axon.model.inference import LocalModel
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.classifier_models import Classifier
from tests.support.st_models import LONG, MIXED, STModel, assert_same_embeddings


def without_onnx(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx", "onnx"))
    return dst


def to_hub(hub: object, repo: str, src: Path) -> None:
    from tests.support.hub_server import FakeHub

    fake: FakeHub = hub[0]  # type: ignore[index]
    fake.add_dir(repo, src)


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


def test_an_export_installs_no_pickle_and_loads_no_weight_from_outside(
        isolated_env: dict[str, str], classifiers: dict[str, Classifier], tmp_path: Path) -> None:
    import json

    settings = Settings.from_env(dict(os.environ))
    src = without_onnx(classifiers["clf"].path, tmp_path / "with-pickles")
    (src / "pytorch_model.bin").write_bytes(b"a pickle")  # what a checkpoint directory often also holds
    (src / "training_args.bin").write_bytes(b"another")
    (src / "modeling_evil.py").write_text("raise SystemExit")
    r = install(parse_spec("clf/clean@1"), settings, from_=str(src), export=True)
    names = {f.path for f in r.manifest.files}
    assert not names & {"pytorch_model.bin", "training_args.bin", "modeling_evil.py"}, names
    assert not any(p.suffix in (".bin", ".py") for p in r.path.rglob("*"))

    # A shard index is a map of paths: one that points outside the package is refused.
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(src / "model.safetensors", outside)
    sharded = without_onnx(classifiers["clf"].path, tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    shutil.copyfile(outside, sharded / "model-00001-of-00001.safetensors")
    from safetensors.numpy import load_file

    keys = list(load_file(outside))
    for target in (str(outside), "../elsewhere.safetensors"):
        (sharded / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: target for k in keys}}))
        with pytest.raises(InvalidModelError, match="names shards that are not files of the package"):
            install(parse_spec("clf/sharded@1"), settings, from_=str(sharded), export=True)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in keys}}))
    ok = install(parse_spec("clf/sharded@1"), settings, from_=str(sharded), export=True)
    assert ok.manifest.source["export"]["max_abs_diff"] <= 1e-4
    assert not any(f.path.endswith((".safetensors", "index.json")) for f in ok.manifest.files)
