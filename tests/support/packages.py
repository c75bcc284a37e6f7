"""Model directories for install tests."""

from __future__ import annotations

import json
from pathlib import Path

from axon.example_model import build_example_package
from tests.support.onnx_models import write_mlp


def mlp_dir(root: Path, *, seed: int = 0) -> Path:
    d = root / f"mlp-{seed}"
    write_mlp(d / "model.onnx", seed=seed)
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    return d


def encoder_dir(root: Path) -> Path:
    return build_example_package(root / "encoder")
