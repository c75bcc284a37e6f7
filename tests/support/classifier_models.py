"""Tiny sequence classifiers and cross-encoders, built offline, and their own libraries as oracles.

Each is a ``BertForSequenceClassification`` (the same 2-layer, hidden-32 shape and WordPiece
vocabulary as st_models.py, a fixed seed, its classifier head scaled so scores spread) saved
with ``save_pretrained`` (or, for the cross-encoders, loaded into ``CrossEncoder`` and saved with
``CrossEncoder.save``), exported to ``model.onnx`` (``torch.onnx.export``: input_ids,
attention_mask, token_type_ids -> logits). The oracles read the saved directory back:
``CrossEncoder(dir).predict`` and ``transformers.pipeline("text-classification", dir)``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.st_models import HIDDEN, MAX_POSITIONS, quiet, vocabulary


@dataclass(frozen=True)
class Kind:
    labels: tuple[str, ...] = ("LABEL_0",)
    problem_type: str | None = None
    cross_encoder: bool = False  # saved by sentence-transformers' CrossEncoder
    activation: str | None = None  # CrossEncoder(activation_fn=torch.nn.<this>())
    max_length: int = MAX_POSITIONS  # the tokenizer's model_max_length


KINDS: dict[str, Kind] = {
    "ce": Kind(cross_encoder=True, max_length=24),  # one label: the library's default sigmoid
    "ce-identity": Kind(cross_encoder=True, activation="Identity"),
    "ce-plain": Kind(),  # a plain transformers save, as older Hub rerankers are: still one sigmoid score
    "clf": Kind(labels=("negative", "neutral", "positive")),  # softmax
    "clf-multi": Kind(labels=("sports", "politics", "science", "art"), problem_type="multi_label_classification"),
    "clf-regression": Kind(problem_type="regression"),
}


@dataclass
class Classifier:
    path: Path
    kind: Kind
    _lib: Any = None

    def predict(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """``CrossEncoder.predict``: one score per pair (the oracle of the cross-encoders)."""
        from sentence_transformers import CrossEncoder

        with quiet():
            if self._lib is None:
                self._lib = CrossEncoder(str(self.path), device="cpu")
            return np.asarray(self._lib.predict(pairs, batch_size=64), np.float32)

    def pipeline(self, texts: list[str], **kwargs: Any) -> Any:
        """``transformers.pipeline("text-classification")`` (the oracle of the classifiers)."""
        from transformers import pipeline

        with quiet():
            if self._lib is None:
                self._lib = pipeline("text-classification", model=str(self.path), device="cpu")
            return self._lib(texts, truncation=True, **kwargs)


def build(root: Path, name: str, kind: Kind, seed: int) -> Classifier:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    hf = out if not kind.cross_encoder else root / f"{name}-hf"
    with quiet():
        hf.mkdir(parents=True, exist_ok=True)
        (root / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
        tok = BertTokenizerFast(vocab=str(root / "vocab.txt"), do_lower_case=False, strip_accents=False,
                                model_max_length=kind.max_length)
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=len(vocabulary()), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=MAX_POSITIONS, attn_implementation="eager",
                         num_labels=len(kind.labels), id2label=dict(enumerate(kind.labels)),
                         label2id={label: i for i, label in enumerate(kind.labels)}, problem_type=kind.problem_type)
        model = BertForSequenceClassification(cfg).eval()
        with torch.no_grad():  # spread the scores: a random head gives logits near 0
            model.classifier.weight.mul_(40)
            model.bert.pooler.dense.weight.mul_(8)
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
        if kind.cross_encoder:
            from sentence_transformers import CrossEncoder

            activation = getattr(torch.nn, kind.activation)() if kind.activation else None
            CrossEncoder(str(hf), device="cpu", activation_fn=activation).save(str(out))

        class Logits(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

        ids = torch.tensor([[2, 40, 41, 3, 42, 3], [2, 43, 3, 44, 3, 0]], dtype=torch.long)
        dyn = {0: "batch", 1: "sequence"}
        torch.onnx.export(Logits(model), (ids, (ids != 0).long(), torch.zeros_like(ids)), str(out / "model.onnx"),
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                                        "logits": {0: "batch"}})
    return Classifier(out, kind)


def build_all(root: Path) -> dict[str, Classifier]:
    """Every kind under *root* (built once; a later call with the same root reuses them)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".done").exists():
            for seed, (name, kind) in enumerate(KINDS.items()):
                build(root, name, kind, seed)
            (root / ".done").write_text(json.dumps(sorted(KINDS)))
    return {name: Classifier(root / name, kind) for name, kind in KINDS.items()}
