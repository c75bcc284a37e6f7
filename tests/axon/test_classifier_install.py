"""Cross-encoders and classifiers installed from a (local, real-protocol) Hub server and run by
axon itself: the manifest records what the library applies to the logits, and ``LocalModel``
gives ``CrossEncoder.predict``'s scores and the pipeline's, on text pairs and single texts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from axon.install import install
from axon.model.inference import LocalModel
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.classifier_models import Classifier
from tests.support.st_models import LONG, MIXED, MULTILINGUAL


def hub_install(hub: object, repo: str, src: Path) -> LocalModel:
    from tests.support.hub_server import FakeHub

    fake: FakeHub = hub[0]  # type: ignore[index]
    fake.add_dir(repo, src)
    r = install(parse_spec(f"hf/{repo}"), Settings.from_env(dict(os.environ)))
    return LocalModel(r.path, r.manifest, device="cpu")


def test_a_cross_encoder_from_the_hub_scores_as_the_library(hub: object, classifiers: dict[str, Classifier]) -> None:
    model = hub_install(hub, "org/reranker", classifiers["ce"].path)
    post = model.manifest.postprocessing or {}
    assert (post["type"], post["task"], post["function"]) == ("classification", "cross-encoder", "sigmoid")
    assert (model.manifest.preprocessing or {})["max_length"] == 24  # the tokenizer's model_max_length
    pairs = [("quick brown fox", d) for d in [*MIXED, MULTILINGUAL]] + [(LONG, LONG)]
    got = model.run(texts=pairs)["scores"].reshape(-1)
    np.testing.assert_allclose(got, classifiers["ce"].predict(pairs), rtol=1e-5, atol=1e-6)


def test_a_classifier_from_the_hub_scores_as_the_pipeline(hub: object, classifiers: dict[str, Classifier]) -> None:
    model = hub_install(hub, "org/topics", classifiers["clf-multi"].path)
    post = model.manifest.postprocessing or {}
    assert (post["function"], post["labels"]) == ("sigmoid", ["sports", "politics", "science", "art"])
    got = model.run(texts=MIXED)["scores"]
    for row, want in zip(got, classifiers["clf-multi"].pipeline(MIXED, top_k=None), strict=True):
        by_label = {w["label"]: w["score"] for w in want}
        np.testing.assert_allclose(row, [by_label[label] for label in post["labels"]], rtol=1e-5, atol=1e-6)


def test_a_classifier_truncates_where_its_library_does(isolated_env: dict[str, str],
                                                       classifiers: dict[str, Classifier], tmp_path: Path) -> None:
    """The tokenizer's model_max_length capped at the positions, as the pipeline and CrossEncoder
    cut (not the 512 a plain encoder gets when its tokenizer says nothing)."""
    import json
    import shutil

    src = tmp_path / "long-context"
    shutil.copytree(classifiers["clf"].path, src)
    for name, key in (("tokenizer_config.json", "model_max_length"), ("config.json", "max_position_embeddings")):
        cfg = json.loads((src / name).read_text())
        cfg[key] = 1024
        (src / name).write_text(json.dumps(cfg))
    r = install(parse_spec("clf/long@1"), Settings.from_env(dict(os.environ)), from_=str(src))
    assert (r.manifest.preprocessing or {})["max_length"] == 1024
