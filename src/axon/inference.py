"""Local inference on a package: the same tokenization and postprocessing MLOS Core applies.

MLOS Core imports this module (axon never imports mlos_core), so ``axon run``, ``axon test``,
``axon validate`` and the server agree on what a model's answer is.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from axon.errors import UsageError
from axon.manifest import Manifest, TensorSpec

__all__ = ["LocalModel", "TextEncoder", "postprocess", "synthesize_inputs"]

DEFAULT_MAX_LENGTH = 512
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
             "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


class TextEncoder:
    """Tokenizes a batch, padded to its longest sequence, into the model's named inputs."""

    def __init__(self, version_dir: Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        pre = manifest.preprocessing or {}
        self.max_length = int(pre.get("max_length") or DEFAULT_MAX_LENGTH)
        self.tokenizer = Tokenizer.from_file(str(version_dir / str(pre.get("tokenizer", "tokenizer.json"))))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad_token = "[PAD]" if self.tokenizer.token_to_id("[PAD]") is not None else "<pad>"
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
        self.inputs = list(manifest.inputs)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        feeds = {}
        for t in self.inputs:
            if t.name not in columns:
                raise UsageError(f"The model's input {t.name!r} cannot be made from text; give tensors instead.")
            feeds[t.name] = np.asarray(columns[t.name], dtype=NP_DTYPES.get(t.dtype, np.int64))
        return feeds


def postprocess(spec: dict[str, Any] | None, outputs: dict[str, np.ndarray],
                feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Extra outputs from the manifest's postprocessing (raw outputs are kept as they are)."""
    if not spec or spec.get("type") in (None, "none"):
        return {}
    name = spec.get("output") or next(iter(outputs))
    if spec.get("type") == "mean_pooling":
        if "embeddings" in outputs:  # already pooled inside the graph (MLOS Core's fused rewrite)
            return {}
        hidden = outputs[name].astype(np.float32, copy=False)
        mask = feeds.get("attention_mask")
        weights = (mask[..., None].astype(np.float32) if mask is not None
                   else np.ones((*hidden.shape[:2], 1), np.float32))
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if spec.get("normalize", True):
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return {"embeddings": pooled.astype(np.float32)}
    if spec.get("type") == "softmax":
        logits = outputs[name].astype(np.float32, copy=False)
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return {"probabilities": z / z.sum(axis=-1, keepdims=True)}
    return {}


def synthesize_inputs(inputs: list[TensorSpec], batch: int = 1, seq: int = 8) -> dict[str, np.ndarray]:
    """Small valid inputs from the I/O schema: dynamic dims become *batch* (first) or *seq*."""
    feeds = {}
    for t in inputs:
        shape = [d if d > 0 else (batch if i == 0 else seq) for i, d in enumerate(t.shape)]
        dtype = NP_DTYPES.get(t.dtype)
        if dtype is None:
            raise UsageError(f"Input {t.name!r} has dtype {t.dtype!r}, which cannot be synthesised.")
        kind = np.dtype(dtype).kind
        feeds[t.name] = np.ones(shape, dtype=dtype) if kind in "iub" else np.full(shape, 0.5, dtype=dtype)
    return feeds


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or (device == "auto" and os.path.exists("/proc/driver/nvidia/version")
                            and "CUDAExecutionProvider" in ort.get_available_providers()):
        if hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):  # a failure shows in the provider actually chosen
                ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class LocalModel:
    """An onnxruntime session on a package plus its text encoder and postprocessing."""

    def __init__(self, version_dir: Path, manifest: Manifest, *, device: str = "auto") -> None:
        import onnxruntime as ort

        self.version_dir = version_dir
        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(version_dir / manifest.entrypoint), sess_options=opts,
                                            providers=providers_for(device))
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            from axon.errors import AxonError

            raise AxonError("Device 'cuda' was asked for, but CUDA cannot run this model here.",
                            hint="Check the driver and CUDA libraries with: axon doctor")
        pre = manifest.preprocessing or {}
        self.text = TextEncoder(version_dir, manifest) if pre.get("type") == "tokenizer" else None

    def run(self, *, texts: list[str] | None = None, tensors: dict[str, np.ndarray] | None = None
            ) -> dict[str, np.ndarray]:
        if texts is not None:
            if self.text is None:
                raise UsageError("This model takes tensors, not text.",
                                 hint="Use --input-file with JSON or .npz tensors")
            feeds = self.text.encode(texts)
        elif tensors is not None:
            feeds = tensors
        else:
            raise UsageError("Give text or tensors to run the model on.")
        raw = self.session.run(None, feeds)
        outputs = {t.name: a for t, a in zip(self.manifest.outputs, raw, strict=False)}
        outputs.update(postprocess(self.manifest.postprocessing, outputs, feeds))
        return outputs
