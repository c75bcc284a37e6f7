"""``axon demo``: the pipeline on the bundled example model, in a sandbox, with no network or root.

Stages so far: build the example package, install it into a sandbox dev cache, verify it, and
run one local inference. Later stages (test, validate, publish, serve, register) join here as
they land.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axon.reporting import Reporter
from axon.settings import Settings
from axon.spec import parse_spec

__all__ = ["DEMO_INPUT", "DEMO_SPEC", "DemoResult", "run_demo"]

DEMO_SPEC = "demo/text-encoder@1.0.0"
DEMO_INPUT = "Hello, MLOS!"


@dataclass(slots=True)
class DemoResult:
    sandbox: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _stage(result: DemoResult, name: str, reporter: Reporter) -> Iterator[dict[str, Any]]:
    reporter.stage(name)
    info: dict[str, Any] = {"stage": name}
    t0 = time.perf_counter()
    yield info
    info["seconds"] = round(time.perf_counter() - t0, 4)
    result.stages.append(info)


def local_embedding(version_dir: Path, text: str) -> dict[str, Any]:
    """Tokenize, run the encoder on CPU, mean-pool and normalise: what the server will do."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    enc = tok.encode(text)
    ids = np.asarray([enc.ids], dtype=np.int64)
    mask = np.asarray([enc.attention_mask], dtype=np.int64)
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (hidden,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return {"tokens": enc.tokens, "embedding_dim": int(pooled.shape[1]),
            "embedding_head": [round(float(v), 5) for v in pooled[0, :4]]}


def run_demo(sandbox: Path, reporter: Reporter, *, echo: Callable[[str], None] = lambda s: None) -> DemoResult:
    from axon.cache import verify
    from axon.example_model import build_example_package
    from axon.install import install

    result = DemoResult(sandbox)
    env = {"AXON_HOME": str(sandbox / "home"), "AXON_CACHE_DIR": str(sandbox / "cache"),
           "AXON_PUBLISH_DIR": str(sandbox / "production"), "HOME": str(sandbox / "home")}
    settings = Settings.from_env(env)
    spec = parse_spec(DEMO_SPEC)
    with _stage(result, "build the example model (ONNX encoder + WordPiece tokenizer)", reporter) as info:
        pkg = build_example_package(sandbox / "example-model")
        info["path"] = str(pkg)
    with _stage(result, f"install {spec} into the sandbox dev cache", reporter) as info:
        installed = install(spec, settings, from_=str(pkg), force=True, reporter=reporter)
        info.update(path=str(installed.path), digest=installed.manifest.digest, files=len(installed.manifest.files))
    with _stage(result, "verify every file against the manifest", reporter) as info:
        report = verify(settings.cache_dir, spec)
        report.raise_for_problems()
        info.update(files=report.files_checked, bytes=report.bytes_checked)
    with _stage(result, f"local inference on {DEMO_INPUT!r}", reporter) as info:
        result.output = local_embedding(installed.path, DEMO_INPUT)
        info.update(result.output)
    return result
