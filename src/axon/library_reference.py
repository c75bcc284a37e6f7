"""``axon validate --reference library``: what the model's own library computes, as the reference.

The package's postprocessing says which library and call: sentence-transformers'
``SentenceTransformer.encode`` for a pooling package (``embeddings``), ``CrossEncoder.predict``
for a cross-encoder (``scores``, on text pairs), the ``text-classification`` pipeline's scores for
a classifier (``scores``, in label-id order), and ``transformers.AutoModel`` for a bare encoder
(``last_hidden_state``, at real tokens only). The library loads the PyTorch weights from the
cached version when it holds them (a local ``save_pretrained`` directory), else from the
package's source: the Hub repository at its recorded commit (``HF_ENDPOINT``/``HF_TOKEN`` apply),
or the local directory it was installed from. Heavy imports happen here only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from axon.errors import UsageError
from axon.store.manifest import Manifest

__all__ = ["SAMPLE_TEXTS", "LibraryReference", "compare", "library_reference"]

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "Grüße aus Köln 😀 中文 日本語 한국어 naïve café",
    "What is the capital of France? " * 100,  # past 512 tokens: truncation counts
]
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # never pickles (pytorch_model.bin)
_SAFE = {"use_safetensors": True}


class LibraryReference:
    """The inputs the library was given and the outputs it gave, by our output name."""

    def __init__(self, library: str, texts: list[Any], outputs: dict[str, np.ndarray],
                 mask: np.ndarray | None = None) -> None:
        self.library = library
        self.texts = texts
        self.outputs = outputs
        self.mask = mask  # last_hidden_state: the real tokens (padding differs between tokenizers' batches)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import logging

    names = ("transformers", "sentence_transformers")
    old = [logging.getLogger(n).level for n in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, level in zip(names, old, strict=True):
                logging.getLogger(n).setLevel(level)


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"--reference library needs {module} for this model, and it is not installed.",
                         hint=f"pip install {extra}")


def _weights_location(version_dir: Path, manifest: Manifest) -> tuple[str, str | None]:
    """(what from_pretrained takes, revision): the version itself, else its source."""
    if any((version_dir / w).is_file() for w in _WEIGHTS):
        return str(version_dir), None
    source = manifest.source or {}
    if source.get("type") == "hf" and source.get("repo"):
        return str(source["repo"]), source.get("commit") or source.get("revision")
    path = source.get("path")
    if source.get("type") == "local" and path and Path(path).is_dir() and \
            any((Path(path) / w).is_file() for w in _WEIGHTS):
        return str(path), None
    raise UsageError("The package holds no PyTorch weights and its source is not a Hub repository or a local "
                     "directory that has them, so its library cannot be run on it.",
                     hint="Give --reference FILE with expected outputs instead.")


def library_reference(version_dir: Path, manifest: Manifest, texts: list[str] | None = None) -> LibraryReference:
    """Run the model's own library on *texts* (default: SAMPLE_TEXTS).

    Raises:
        UsageError: the library is not installed, the package is not text, or no weights can be found.
    """
    texts = list(texts or SAMPLE_TEXTS)
    if manifest.preprocessing is None or manifest.preprocessing.get("type") != "tokenizer":
        raise UsageError("--reference library compares text models; this one takes tensors.",
                         hint="Give --reference FILE with inputs and expected outputs.")
    post = manifest.postprocessing or {}
    where, revision = _weights_location(version_dir, manifest)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    with _quiet():
        if post.get("type") in ("pooling", "embedding_output"):
            _need("sentence_transformers", "sentence-transformers")
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(where, device="cpu", trust_remote_code=False, model_kwargs=_SAFE, **kwargs)
            return LibraryReference("sentence-transformers SentenceTransformer.encode", texts,
                                    {"embeddings": np.asarray(st.encode(texts, convert_to_numpy=True), np.float32)})
        if post.get("type") == "classification" and post.get("task") == "cross-encoder":
            _need("sentence_transformers", "sentence-transformers")
            from sentence_transformers import CrossEncoder

            pairs = [(texts[i], texts[(i + 1) % len(texts)]) for i in range(len(texts))]
            ce = CrossEncoder(where, device="cpu", trust_remote_code=False, model_kwargs=_SAFE, **kwargs)
            scores = np.asarray(ce.predict(pairs), np.float32)
            return LibraryReference("sentence-transformers CrossEncoder.predict", pairs,
                                    {"scores": scores.reshape(len(pairs), -1)})
        _need("transformers", "transformers torch")
        _need("torch", "torch")
        import torch
        from transformers import AutoModel, AutoTokenizer, pipeline

        if post.get("type") in ("classification", "softmax"):
            clf = pipeline("text-classification", model=where, device="cpu", trust_remote_code=False,
                           model_kwargs=_SAFE, **kwargs)
            config: Any = clf.model.config  # the stubs type id2label loosely; it maps ints to names here
            labels = [config.id2label[i] for i in range(config.num_labels)]
            rows: Any = clf(texts, top_k=None, truncation=True)  # one list of {label, score} per text
            scores = np.asarray([[{r["label"]: r["score"] for r in row}[label] for label in labels] for row in rows],
                                np.float32)
            return LibraryReference("transformers pipeline('text-classification')", texts,
                                    {"scores" if post.get("type") == "classification" else "probabilities": scores})
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=False, **kwargs)
        model = AutoModel.from_pretrained(where, trust_remote_code=False, **_SAFE, **kwargs).eval()
        max_length = int(manifest.preprocessing.get("max_length") or 512)
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state.numpy().astype(np.float32)
        return LibraryReference(f"transformers {type(model).__name__}", texts, {"last_hidden_state": hidden},
                                mask=enc["attention_mask"].numpy())


def compare(got: np.ndarray, want: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float | None]:
    """Max abs difference and the lowest cosine between rows (per token when *mask* is given)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if mask is not None:  # positions past a text's end differ with the padding; only real tokens count
        keep = mask.astype(bool)
        got, want = got[keep], want[keep]
    a, b = got.reshape(len(got), -1), want.reshape(len(want), -1)
    result: dict[str, float | None] = {"max_abs_diff": float(np.abs(a - b).max(initial=0)), "min_cosine": None}
    if a.shape[1] > 1:  # one score per row: a cosine says nothing
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
        result["min_cosine"] = float(cos.min(initial=1.0))
    return result
