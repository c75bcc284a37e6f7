"""Text in, tensors out (HF ``tokenizers``), and the manifest's postprocessing on the way back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from axon.manifest import Manifest
from mlos_core.errors import ApiError

__all__ = ["TextPipeline", "postprocess"]

DEFAULT_MAX_LENGTH = 512


class TextPipeline:
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
        self.input_names = [t.name for t in manifest.inputs]
        self.input_dtypes = {t.name: t.dtype for t in manifest.inputs}

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds: dict[str, np.ndarray] = {}
        for name in self.input_names:
            if name == "input_ids":
                feeds[name] = ids
            elif name == "attention_mask":
                feeds[name] = mask
            elif name == "token_type_ids":
                feeds[name] = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
            else:
                raise ApiError(400, "not_a_text_model", f"the model's input {name!r} cannot be made from text; "
                               "send named tensors instead")
        for name, arr in feeds.items():
            if self.input_dtypes.get(name) == "int32":
                feeds[name] = arr.astype(np.int32)
        return feeds


def postprocess(spec: dict[str, Any] | None, outputs: dict[str, np.ndarray],
                feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Extra outputs from the manifest's postprocessing (raw outputs are kept as they are)."""
    if not spec or spec.get("type") in (None, "none"):
        return {}
    kind = spec.get("type")
    if kind == "mean_pooling":
        name = spec.get("output") or next(iter(outputs))
        hidden = outputs[name].astype(np.float32, copy=False)
        mask = feeds.get("attention_mask")
        weights = (mask[..., None].astype(np.float32) if mask is not None
                   else np.ones((*hidden.shape[:2], 1), np.float32))
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if spec.get("normalize", True):
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return {"embeddings": pooled.astype(np.float32)}
    if kind == "softmax":
        name = spec.get("output") or next(iter(outputs))
        logits = outputs[name].astype(np.float32, copy=False)
        z = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=-1, keepdims=True)
        return {"probabilities": probs}
    return {}
