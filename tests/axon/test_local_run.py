"""``axon.local_run``: a cached model on texts, JSON or .npz inputs, in this process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from axon.errors import NotInstalledError, UsageError
from axon.example_model import build_example_package
from axon.install import install
from axon.local_run import ModelFeeds, RunInputs, read_input_file, run_locally
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.onnx_models import mlp_outputs, write_mlp

ENC, MLP = parse_spec("demo/enc@1"), parse_spec("demo/mlp@1")


@pytest.fixture
def encoder(settings: Settings, tmp_path: Path) -> Path:
    return install(ENC, settings, from_=str(build_example_package(tmp_path / "enc"))).path


@pytest.fixture
def mlp(settings: Settings, tmp_path: Path) -> Path:
    return install(MLP, settings, from_=str(write_mlp(tmp_path / "mlp" / "model.onnx").parent)).path


def test_run_inputs_take_texts_or_a_file_never_both_nor_neither(tmp_path: Path) -> None:
    for args in ({}, {"texts": ("a",), "input_file": tmp_path / "x.json"}):
        with pytest.raises(UsageError, match="Give either --input TEXT or --input-file FILE"):
            RunInputs(**args)  # type: ignore[arg-type]
    assert RunInputs(texts=("a", "b")).read() == ModelFeeds(texts=["a", "b"])


def test_read_input_file_json_shapes(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text(json.dumps({"input": "one text"}))
    assert read_input_file(f) == ModelFeeds(texts=["one text"])
    f.write_text(json.dumps({"input": ["a", "b"]}))
    assert read_input_file(f) == ModelFeeds(texts=["a", "b"])
    f.write_text(json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    assert read_input_file(f) == ModelFeeds(tensors={"x": [[1, 2, 3, 4]]})
    f.write_text(json.dumps({"x": [[1, 2]]}))  # bare names -> tensors
    assert read_input_file(f) == ModelFeeds(tensors={"x": [[1, 2]]})


@pytest.mark.parametrize(("name", "content", "message"), [
    ("x.json", "{not json", "Cannot read --input-file"),
    ("x.json", "[1, 2]", "must be {'input': text}"),
    ("x.json", json.dumps({"inputs": [1, 2]}), "must be {'input': text}"),
    ("x.npy", "", "A .npy file holds one unnamed array"),
])
def test_read_input_file_refuses_what_it_cannot_use(tmp_path: Path, name: str, content: str, message: str) -> None:
    f = tmp_path / name
    if name.endswith(".npy"):
        np.save(f, np.ones(3))
    else:
        f.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_input_file(f)


def test_read_input_file_npz_keeps_names_and_dtypes(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.arange(8, dtype=np.int32).reshape(2, 4), y=np.zeros(3))
    feeds = read_input_file(tmp_path / "x.npz")
    assert feeds.texts is None and feeds.tensors is not None
    assert sorted(feeds.tensors) == ["x", "y"] and feeds.tensors["x"].dtype == np.int32
    np.testing.assert_array_equal(feeds.tensors["x"], np.arange(8).reshape(2, 4))


def test_text_run_matches_the_package_reference(encoder: Path, settings: Settings) -> None:
    ref = json.loads((encoder / "samples" / "reference.json").read_text())
    texts = tuple(ref["inputs"]["texts"])
    r = run_locally(ENC, settings, RunInputs(texts=texts), device="cpu")
    assert r.spec == ENC and r.provider == "CPUExecutionProvider" and r.labels is None
    assert list(r.outputs) == ["embeddings"]  # the graph's own output is left out: postprocessing exists
    np.testing.assert_allclose(r.outputs["embeddings"], ref["outputs"]["embeddings"], atol=1e-5)
    raw = run_locally(ENC, settings, RunInputs(texts=texts), device="cpu", raw=True)
    assert list(raw.outputs) == ["last_hidden_state", "embeddings"]
    hidden = raw.outputs["last_hidden_state"]
    assert hidden.dtype == np.float32 and hidden.shape[0] == len(texts) and hidden.shape[2] == 64
    np.testing.assert_array_equal(raw.outputs["embeddings"], r.outputs["embeddings"])


def test_texts_from_a_json_file_run_as_texts(encoder: Path, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"input": "Hello, MLOS!"}))
    from_file = run_locally(ENC, settings, RunInputs(input_file=tmp_path / "x.json"), device="cpu")
    direct = run_locally(ENC, settings, RunInputs(texts=("Hello, MLOS!",)), device="cpu")
    np.testing.assert_array_equal(from_file.outputs["embeddings"], direct.outputs["embeddings"])


def test_tensor_runs_take_the_manifest_dtypes(mlp: Path, settings: Settings, tmp_path: Path) -> None:
    x = np.array([[1, 2, 3, 4], [0, -1, 2, 0.5]])
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": x.tolist()}}))
    r = run_locally(MLP, settings, RunInputs(input_file=tmp_path / "x.json"), device="cpu")
    assert list(r.outputs) == ["y"] and r.outputs["y"].dtype == np.float32  # ints in JSON became float32
    np.testing.assert_allclose(r.outputs["y"], mlp_outputs(x), rtol=1e-5, atol=1e-6)
    np.savez(tmp_path / "x.npz", x=x)  # float64 in the file, float32 for the model
    np.testing.assert_array_equal(run_locally(MLP, settings, RunInputs(input_file=tmp_path / "x.npz")).outputs["y"],
                                  r.outputs["y"])


def test_usage_errors_of_a_run(mlp: Path, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="takes tensors, not text"):
        run_locally(MLP, settings, RunInputs(texts=("text",)))
    (tmp_path / "x.json").write_text(json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}))
    with pytest.raises(UsageError, match="--prompt and --prompt-name apply to text input"):
        run_locally(MLP, settings, RunInputs(input_file=tmp_path / "x.json"), prompt="query: ")
    with pytest.raises(NotInstalledError):
        run_locally(parse_spec("demo/absent@1"), settings, RunInputs(texts=("a",)))


def test_a_classifier_run_carries_its_labels(settings: Settings, classifiers: dict[str, object]) -> None:
    spec = parse_spec("demo/sentiment@1")
    install(spec, settings, from_=str(classifiers["clf"].path))  # type: ignore[attr-defined]
    r = run_locally(spec, settings, RunInputs(texts=("great", "awful")), device="cpu")
    assert r.labels == ["negative", "neutral", "positive"]
    assert r.outputs["scores"].shape == (2, 3)
    np.testing.assert_allclose(r.outputs["scores"].sum(axis=1), 1.0, rtol=1e-5)  # softmax
