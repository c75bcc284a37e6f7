"""``--precision int8``: the int8 variant is made from the verified graph in memory, served only
when its outputs keep the gate's cosine to fp32, never written into the repository, and made
again (verified) after a restart. The oracle is sentence-transformers itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import numpy_helper

from axon.demo import sandbox_settings
from axon.example_model import EncoderConfig, build_encoder_onnx
from axon.model.quantize import gate_tensors, lowest_cosine, quantize_int8
from axon.store.manifest import TensorSpec
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.onnx_models import int8_collapsing_model
from tests.support.st_models import MIXED, SHORT, STModel

COLLAPSE = "demo/collapse@1"
ST_MEAN, ST_DENSE = "st/mean@1", "st/dense@1"


def _tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under *root* with its inode, size, mode and mtime: what "nothing written" means."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            s = p.lstat()
            out[str(p.relative_to(root))] = (s.st_ino, s.st_size, s.st_mode, s.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def repo(st_models: dict[str, STModel], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("int8")
    settings = sandbox_settings(tmp)
    publish_dir_as(settings, ST_MEAN, st_models["mean"].path)
    publish_dir_as(settings, ST_DENSE, st_models["dense"].path)
    src = tmp / "collapse-src"
    src.mkdir()
    (src / "model.onnx").write_bytes(int8_collapsing_model().SerializeToString())
    publish_dir_as(settings, COLLAPSE, src)
    return settings.publish_dir, tmp


@pytest.fixture(scope="module")
def int8_core(repo: tuple[Path, Path]) -> Iterator[tuple[Core, dict[str, dict], Path]]:
    root, tmp = repo
    core_dir = root / ".axon" / "core"
    before = _tree(root)
    with core_server(root, tmp, "--precision", "int8") as c:
        bodies = {}
        for spec in (ST_MEAN, ST_DENSE, COLLAPSE):
            status, body, _ = c.call("POST", "/models/register", {"model_id": spec})
            assert status == 201, body
            bodies[spec] = body
        changed = {k for k, v in _tree(root).items() if before.get(k) != v}
        # only MLOS Core's own state (registrations, token) may change; no model file appears anywhere
        core = str(core_dir.relative_to(root))
        assert all(k.startswith(core) or core.startswith(k + "/") for k in changed), changed
        assert not [k for k in _tree(root) if k.endswith(".onnx") and k not in before]
        yield c, bodies, tmp


def embed(c: Core, spec: str, texts: list[str]) -> np.ndarray:
    status, body, _ = c.call("POST", f"/models/{spec}/inference", {"input": texts, "outputs": ["embeddings"]})
    assert status == 200, body
    return np.asarray(body["outputs"]["embeddings"]["data"], np.float64)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(("spec", "name"), [(ST_MEAN, "mean"), (ST_DENSE, "dense")])
def test_int8_embeddings_keep_the_gate_to_the_library(spec: str, name: str, int8_core: tuple[Core, dict, Path],
                                                      st_models: dict[str, STModel]) -> None:
    c, bodies, _ = int8_core
    precision = bodies[spec]["precision"]
    assert precision["requested"] == "int8" and precision["served"] == "int8", precision
    assert precision["cosine"] >= precision["min_cosine"] == 0.99 and precision["samples"] >= 12
    for texts in (MIXED, SHORT):
        got, want = embed(c, spec, texts), st_models[name].encode(texts).astype(np.float64)
        assert rowwise_cosine(got, want).min() >= 0.99  # sentence-transformers' own fp32 numbers
        assert not np.allclose(got, want, atol=1e-6)  # int8 really served: not fp32's numbers exactly


def test_a_model_that_collapses_under_int8_is_served_in_fp32(int8_core: tuple[Core, dict, Path]) -> None:
    c, bodies, _ = int8_core
    precision = bodies[COLLAPSE]["precision"]
    assert precision["served"] == "fp32" and precision["cosine"] < 0.5, precision
    assert "cosine" in precision["refused"] and "0.99" in precision["refused"]
    status, models, _ = c.call("GET", "/models")
    listed = {m["model_id"]: m for m in models["models"]}
    assert listed[COLLAPSE]["precision"]["served"] == "fp32"
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    status, body, _ = c.call("POST", f"/models/{COLLAPSE}/inference", {"inputs": {"x": x.tolist()}})
    assert status == 200, body
    w = numpy_helper.to_array(int8_collapsing_model().graph.initializer[0])
    want = (x * np.r_[0.0, np.ones(7)]).astype(np.float32) @ w
    np.testing.assert_allclose(np.asarray(body["outputs"]["y"]["data"]), want, rtol=1e-5, atol=1e-6)


def test_precision_and_cosine_are_in_the_metrics(int8_core: tuple[Core, dict, Path]) -> None:
    import urllib.request

    c, bodies, _ = int8_core
    with urllib.request.urlopen(f"{c.url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    assert f'mlos_model_int8{{model="{ST_MEAN}"}} 1' in text and f'mlos_model_int8{{model="{COLLAPSE}"}} 0' in text
    assert f'mlos_model_int8_cosine{{model="{ST_MEAN}"}} {bodies[ST_MEAN]["precision"]["cosine"]:g}'[:60] in text


def test_a_restart_makes_the_variant_again(repo: tuple[Path, Path], int8_core: tuple[Core, dict, Path]) -> None:
    c, bodies, tmp = int8_core
    first = embed(c, ST_MEAN, MIXED)
    root, _ = repo
    with core_server(root, tmp, "--precision", "int8") as again:  # the same state dir: registrations restored
        status, models, _ = again.call("GET", "/models")
        assert status == 200
        listed = {m["model_id"]: m for m in models["models"]}
        assert listed[ST_MEAN]["precision"]["served"] == "int8"
        assert listed[ST_MEAN]["precision"]["cosine"] == bodies[ST_MEAN]["precision"]["cosine"]
        np.testing.assert_allclose(embed(again, ST_MEAN, MIXED), first, rtol=1e-5, atol=1e-6)


def test_int8_options_are_checked(tmp_path: Path) -> None:
    for args, says in ((["--precision", "int8", "--device", "cuda"], "int8 needs --device cpu"),
                       (["--precision", "int8", "--device", "cpu", "--int8-min-cosine", "1.5"], "(0, 1]")):
        proc = subprocess.run([sys.executable, "-m", "mlos_core", "serve", "--repository", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_minilm_shaped_encoder_passes_the_gate() -> None:
    """The MiniLM-L6 shape (6 layers, hidden 384): int8 keeps cosine 0.99 on every token."""
    cfg = EncoderConfig(vocab_size=1000, hidden=384, layers=6, heads=12, ffn=1536)
    model = build_encoder_onnx(cfg, 1000)
    import onnxruntime as ort

    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(quantize_int8(model).SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, 1000, (8, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[2, 9:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    ref, got = fp32.run(None, feeds)[0], int8.run(None, feeds)[0]
    assert lowest_cosine({"h": ref}, {"h": got}, mask) >= 0.99
    assert not np.allclose(ref, got)  # quantized: not the same graph
    assert {n.op_type for n in quantize_int8(model).graph.node} & {"MatMulInteger", "DynamicQuantizeLinear"}


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
                  elements=st.floats(-1e3, 1e3, width=32)), st.floats(0.01, 100))
def test_lowest_cosine_is_a_cosine(x: np.ndarray, scale: float) -> None:
    assert lowest_cosine({"y": x}, {"y": x * np.float32(scale)}) == pytest.approx(1.0, abs=1e-6)
    nonzero = np.abs(x.reshape(len(x), -1)).sum(1) > 0
    if nonzero.any():
        assert lowest_cosine({"y": x}, {"y": -x}) == pytest.approx(-1.0, abs=1e-6)
        assert lowest_cosine({"y": x}, {"y": np.zeros_like(x)}) == 0.0
    bad = x.copy()
    bad.flat[0] = np.inf
    assert lowest_cosine({"y": x}, {"y": bad}) == 0.0  # inf where fp32 has a number


def test_gate_tensors_differ_by_row() -> None:
    feeds = gate_tensors([TensorSpec("x", "float32", [-1, 8]), TensorSpec("ids", "int64", [-1, -1])])
    assert feeds["x"].shape == (8, 8) and len({r.tobytes() for r in feeds["x"]}) == 8
    assert feeds["ids"].shape == (8, 16) and feeds["ids"].dtype == np.int64
