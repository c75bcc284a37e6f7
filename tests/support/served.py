"""The two models most server tests serve (a text encoder and a small MLP), published into a
sandbox repository, and their references computed with onnxruntime directly (never our code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from axon.demo import sandbox_settings
from axon.example_model import build_example_package
from axon.settings import Settings
from tests.support.core_server import publish_dir_as
from tests.support.onnx_models import mlp_model, write_mlp

__all__ = ["MLP", "TEXT", "mlp_reference", "ort_text_embedding", "publish_demo_models"]

TEXT = "demo/enc@1"
MLP = "demo/mlp@1"


def publish_demo_models(tmp: Path) -> Settings:
    """A sandbox (dev cache + production repository) under *tmp* with TEXT and MLP published."""
    settings = sandbox_settings(tmp)
    publish_dir_as(settings, TEXT, build_example_package(tmp / "enc-src"))
    write_mlp(tmp / "mlp-src" / "model.onnx", features=4, out=3, seed=5)
    publish_dir_as(settings, MLP, tmp / "mlp-src")
    return settings


def ort_text_embedding(version_dir: Path, text: str) -> np.ndarray:
    tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    enc = tok.encode(text)
    ids = np.asarray([enc.ids], np.int64)
    mask = np.asarray([enc.attention_mask], np.int64)
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
    pooled = hidden.mean(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)  # type: ignore[no-any-return]


def mlp_reference(x: np.ndarray) -> np.ndarray:
    model = mlp_model(features=4, out=3, seed=5)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]  # type: ignore[no-any-return]
