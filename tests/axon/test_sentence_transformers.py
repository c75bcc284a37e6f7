"""Sentence-transformers packages: the manifest says what the library computes, and ``axon run``
(axon.model.inference) gives the library's numbers. The oracle is sentence-transformers itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from axon.demo import sandbox_settings
from axon.errors import InvalidModelError, UsageError
from axon.install import install
from axon.model.inference import LocalModel, postprocess
from axon.model.pooling import PoolingSpec, pool, pooling_spec
from axon.settings import Settings
from axon.store.spec import parse_spec
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
def installed(st_models: dict[str, STModel], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Settings, dict[str, LocalModel]]:
    settings = sandbox_settings(tmp_path_factory.mktemp("st-axon"))
    models = {}
    for name, m in st_models.items():
        r = install(parse_spec(f"st/{name}@1"), settings, from_=str(m.path))
        models[name] = LocalModel(r.path, r.manifest, device="cpu")
    return settings, models


def test_manifest_reads_the_sentence_transformers_files(installed: tuple[Settings, dict[str, LocalModel]]) -> None:
    _, models = installed
    m = models["cls-norm"].manifest
    assert m.postprocessing == {"type": "pooling", "modes": ["cls"], "include_prompt": True, "normalize": True,
                                "output": "last_hidden_state", "source": "sentence-transformers"}
    assert m.preprocessing and m.preprocessing["max_length"] == 12 and "lowercase" not in m.preprocessing
    assert models["mean"].manifest.entrypoint == "onnx/model.onnx"
    assert models["mean"].manifest.postprocessing["normalize"] is False  # type: ignore[index]
    assert models["mean"].manifest.preprocessing["max_length"] == 64  # type: ignore[index]  # tokenizer, capped
    assert models["mean-norm"].manifest.preprocessing["lowercase"] is True  # type: ignore[index]
    assert models["concat"].manifest.postprocessing["modes"] == ["mean", "cls", "max"]  # type: ignore[index]
    assert models["legacy"].manifest.postprocessing["modes"] == ["cls", "mean"]  # type: ignore[index]
    pre = models["prompts"].manifest.preprocessing or {}
    assert pre["prompts"]["query"] == "query: " and pre["default_prompt_name"] == "query"
    assert models["prompts-excluded"].manifest.postprocessing["include_prompt"] is False  # type: ignore[index]
    dense = models["dense2"].manifest.postprocessing["dense"]  # type: ignore[index]
    files = {f.path: f.sha256 for f in models["dense2"].manifest.files}
    assert [(d["weights"], d["in_features"], d["out_features"], d["bias"], d["activation"]) for d in dense] == [
        ("2_Dense/model.safetensors", 64, 16, True, "gelu"), ("3_Dense/model.safetensors", 16, 8, False, "identity")]
    assert all(d["sha256"] == files[d["weights"]] for d in dense)


def test_changed_dense_weights_are_refused(installed: tuple[Settings, dict[str, LocalModel]], tmp_path: Path) -> None:
    from axon.errors import IntegrityError

    model = installed[1]["dense"]
    copy = tmp_path / "v"
    shutil.copytree(model.version_dir, copy)
    weights = copy / "2_Dense" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"2_Dense/model\.safetensors"):
        LocalModel(copy, model.manifest, device="cpu")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_axon_inference_matches_the_library(name: str, st_models: dict[str, STModel],
                                            installed: tuple[Settings, dict[str, LocalModel]]) -> None:
    model, oracle = installed[1][name], st_models[name]
    for texts in (MIXED, SHORT, [MULTILINGUAL], [LONG]):
        assert_same_embeddings(model.run(texts=texts)["embeddings"], oracle.encode(texts))


@pytest.mark.parametrize("name", ["prompts", "prompts-excluded"])
def test_prompts_match_the_library(name: str, st_models: dict[str, STModel],
                                   installed: tuple[Settings, dict[str, LocalModel]]) -> None:
    model, oracle = installed[1][name], st_models[name]
    for kwargs in ({}, {"prompt_name": "query"}, {"prompt_name": "passage"}, {"prompt": "Represent this: "},
                   {"prompt": ""}):
        assert_same_embeddings(model.run(texts=MIXED, **kwargs)["embeddings"], oracle.encode(MIXED, **kwargs))
    with pytest.raises(UsageError, match="not one of the model's prompts"):
        model.run(texts=SHORT, prompt_name="nope")
    with pytest.raises(UsageError, match="not both"):
        model.run(texts=SHORT, prompt="x", prompt_name="query")


def test_axon_run_cli_matches_the_library(axon_cli: object, st_models: dict[str, STModel],
                                          installed: tuple[Settings, dict[str, LocalModel]]) -> None:
    settings, _ = installed
    env = {"AXON_HOME": str(settings.home), "AXON_CACHE_DIR": str(settings.cache_dir)}
    args = [a for t in MIXED[:3] for a in ("--input", t)]
    r = axon_cli("run", "st/concat@1", *args, "--json", env=env)  # type: ignore[operator]
    assert r.code == 0, r.stderr
    got = json.loads(r.stdout)["outputs"]["embeddings"]["data"]
    assert_same_embeddings(got, st_models["concat"].encode(MIXED[:3]))


def test_old_mean_pooling_manifests_still_mean_pool() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.asarray([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int64)
    old = {"type": "mean_pooling", "normalize": True, "output": "last_hidden_state"}
    assert pooling_spec(old) == PoolingSpec(("mean",), True, True, "last_hidden_state")
    assert pooling_spec({"type": "mean_pooling"}) == PoolingSpec(("mean",), True, True, None)
    got = postprocess(old, {"last_hidden_state": hidden}, {"attention_mask": mask})["embeddings"]
    want = np.stack([hidden[0].mean(0), hidden[1, :2].mean(0)])
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)
    raw = pool(hidden, mask, PoolingSpec(("mean",), False, True, None))
    np.testing.assert_allclose(raw, want, rtol=1e-6)


def _refused(settings: Settings, src: Path, match: str) -> None:
    with pytest.raises(InvalidModelError, match=match):
        install(parse_spec("st/refused@1"), settings, from_=str(src))
    assert not (settings.cache_dir / "st" / "refused").exists()


def test_unimplemented_modules_are_refused_at_install(st_models: dict[str, STModel], settings: Settings,
                                                      tmp_path: Path, axon_cli: object) -> None:
    softsign = next(iter(st_models.values())).path.parent / "dense-softsign"
    _refused(settings, softsign, "activation 'torch.nn.modules.activation.Softsign' is not implemented")
    r = axon_cli("install", "st/refused@1", "--from", str(softsign))  # type: ignore[operator]
    assert r.code == 2 and "Softsign" in r.stderr, r.stderr
    # Any other module type too, and one of the library's pooling modes we do not know.
    other = tmp_path / "other"
    shutil.copytree(st_models["mean"].path, other)
    modules = json.loads((other / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_WordWeights",
                       "type": "sentence_transformers.models.WordWeights"})
    (other / "modules.json").write_text(json.dumps(modules))
    _refused(settings, other, "WordWeights module")
    shutil.copy(st_models["mean"].path / "modules.json", other / "modules.json")
    (other / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    _refused(settings, other, "median")


def test_hub_install_of_a_sentence_transformers_repo(hub: object, st_models: dict[str, STModel]) -> None:
    import os

    from tests.support.hub_server import FakeHub

    fake: FakeHub = hub[0]  # type: ignore[index]
    src = st_models["cls-norm"].path
    fake.add_dir("org/st-cls", src)
    r = install(parse_spec("hf/org/st-cls"), Settings.from_env(dict(os.environ)))
    assert r.manifest.postprocessing and r.manifest.postprocessing["modes"] == ["cls"]
    model = LocalModel(r.path, r.manifest, device="cpu")
    assert_same_embeddings(model.run(texts=MIXED)["embeddings"], st_models["cls-norm"].encode(MIXED))


def test_hub_install_fetches_every_module_directory(hub: object, st_models: dict[str, STModel]) -> None:
    """A repo with Dense layers (2_Dense/, 3_Dense/ …) arrives with them and serves the library's numbers."""
    import os

    from tests.support.hub_server import FakeHub

    fake: FakeHub = hub[0]  # type: ignore[index]
    src = st_models["dense2"].path
    fake.add_dir("org/st-dense", src)
    r = install(parse_spec("hf/org/st-dense"), Settings.from_env(dict(os.environ)))
    assert r.manifest.postprocessing and len(r.manifest.postprocessing["dense"]) == 2
    model = LocalModel(r.path, r.manifest, device="cpu")
    assert_same_embeddings(model.run(texts=MIXED)["embeddings"], st_models["dense2"].encode(MIXED))


def test_axon_run_cli_takes_a_prompt_name(axon_cli: object, st_models: dict[str, STModel],
                                          installed: tuple[Settings, dict[str, LocalModel]]) -> None:
    settings, _ = installed
    env = {"AXON_HOME": str(settings.home), "AXON_CACHE_DIR": str(settings.cache_dir)}
    args = [a for t in MIXED[:2] for a in ("--input", t)]
    r = axon_cli("run", "st/prompts@1", *args, "--prompt-name", "passage", "--json", env=env)  # type: ignore[operator]
    assert r.code == 0, r.stderr
    got = json.loads(r.stdout)["outputs"]["embeddings"]["data"]
    assert_same_embeddings(got, st_models["prompts"].encode(MIXED[:2], prompt_name="passage"))
    r = axon_cli("run", "st/prompts@1", *args, "--prompt-name", "nope", env=env)  # type: ignore[operator]
    assert r.code == 2 and "nope" in r.stderr
