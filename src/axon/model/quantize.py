"""int8 weights for CPU serving, and the accuracy gate that decides whether they may be served.

The recipe is onnxruntime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``)
limited to what keeps an encoder's numbers: the weights of ``MatMul`` nodes only, int8 per output
channel, activations quantized at run time. Measured on a real MiniLM-L6 (AVX-512 VNNI): the
quantizer's defaults run 2.2x fp32 but give cosine 0.96 to the fp32 embeddings; this recipe runs
2.05x at 0.992-0.993. The variant is made in memory from the verified fp32 graph, never written
into any repository.

No recipe is right for every model, so nothing is served on faith: :func:`lowest_cosine` compares
the variant's final outputs with fp32's on the package's sample texts and a fixed set of others
(the caller refuses the variant below its threshold, :data:`DEFAULT_MIN_COSINE` unless told).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from axon.errors import AxonError
from axon.model.inference import read_verified_file
from axon.store.dtypes import numpy_type
from axon.store.manifest import Manifest, TensorSpec

__all__ = ["DEFAULT_MIN_COSINE", "GATE_TEXTS", "INT8_RECIPE", "REFERENCE_PATHS", "gate_tensors", "gate_texts",
           "lowest_cosine", "package_sample_texts", "quantize_int8"]

DEFAULT_MIN_COSINE = 0.99
INT8_RECIPE = "dynamic int8, MatMul weights per channel (onnxruntime quantize_dynamic)"
PROTOBUF_LIMIT = 2**31 - 1
REFERENCE_PATHS = ("samples/reference.json", "reference.json")  # where a package keeps its sample inputs
MAX_SAMPLE_BYTES = 16 << 20

# Varied on purpose: short and long, punctuation, digits, casing, accents, a question, code.
GATE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street while people walk by.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France, on the Seine river.",
    "Stock markets fell 3.2% on Tuesday after the central bank raised rates by 50 basis points.",
    "def add(a, b): return a + b",
    "Café, naïve, résumé: accents should not change much.",
    "ok",
    "The patient was given 20 mg of the drug twice daily for two weeks and showed no side effects.",
    "Machine learning models are moved from a development cache into a production repository, "
    "verified, published atomically and served with dynamic batching on CPUs and GPUs.",
    "I loved this movie, the acting was wonderful!",
    "I hated this movie, the plot made no sense.",
)


def quantize_int8(proto: Any) -> Any:
    """The int8 variant of *proto* (an ``onnx.ModelProto`` with every weight inside it), as a new
    ModelProto. Raises AxonError when onnxruntime's quantizer is missing or fails on the graph."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise AxonError(f"int8 needs onnxruntime's quantization tools, which did not import ({exc}).",
                        hint="Install onnxruntime (it ships onnxruntime.quantization) and onnx.") from None
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise AxonError("int8 quantizes the whole graph in memory and this one is over protobuf's 2 GiB limit.",
                        hint="Serve it in fp32 (--precision fp32).")
    source = onnx.ModelProto()
    source.CopyFrom(proto)  # the quantizer edits what it is given; the caller's graph stays fp32
    with tempfile.TemporaryDirectory(prefix="axon-int8-") as tmp:  # 0700: this process's own
        out = Path(tmp) / "int8.onnx"
        try:
            with _quiet_quantizer():
                    quantize_dynamic(source, out, op_types_to_quantize=["MatMul"], per_channel=True,
                                 weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        except Exception as exc:  # the quantizer raises whatever its passes hit
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise AxonError(f"onnxruntime's quantizer failed on this graph ({type(exc).__name__}: {first}).",
                            hint="Serve it in fp32 (--precision fp32).") from None
        return onnx.load(str(out))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice (run its pre-processing first) on the root logger at every call:
    not something a server operator can act on, so it is kept out of their log."""
    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def gate_texts(samples: Sequence[str] = ()) -> list[str]:
    """The texts the gate runs: the package's own samples first, then :data:`GATE_TEXTS`."""
    seen: dict[str, None] = dict.fromkeys(t for t in samples if isinstance(t, str) and t)
    seen.update(dict.fromkeys(GATE_TEXTS))
    return list(seen)


def gate_tensors(inputs: Sequence[TensorSpec], batch: int = 8, seq: int = 16) -> dict[str, np.ndarray]:
    """Inputs for a tensor model's gate: seeded normal floats (every row different, unlike the
    warm-up's constants), ones for integer inputs."""
    rng = np.random.default_rng(0)
    feeds = {}
    for t in inputs:
        shape = [d if d > 0 else (batch if i == 0 else seq) for i, d in enumerate(t.shape)]
        dtype = numpy_type(t.dtype)
        if dtype is None:
            raise AxonError(f"Input {t.name!r} has dtype {t.dtype!r}, which the int8 gate cannot make inputs for.",
                            hint="Serve it in fp32 (--precision fp32).")
        kind = np.dtype(dtype).kind
        feeds[t.name] = (np.ones(shape, dtype=dtype) if kind in "iub"
                         else rng.standard_normal(shape).astype(dtype))
    return feeds


def lowest_cosine(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                  mask: np.ndarray | None = None) -> float:
    """The lowest cosine similarity between a row of *reference* and the same row of
    *candidate*, over every floating-point output both have (a row: everything of one input,
    flattened; for token outputs ``[batch, tokens, ...]`` the padding positions, where *mask*
    is 0, left out). 1.0 for two zero rows, 0.0 for a zero row against a non-zero one."""
    lowest = 1.0
    compared = 0
    for name, ref in reference.items():
        got = candidate.get(name)
        if got is None or ref.dtype.kind != "f" or ref.shape != got.shape or ref.ndim == 0:
            continue
        a, b = ref.astype(np.float64), got.astype(np.float64)
        if mask is not None and a.ndim >= 2 and a.shape[:2] == mask.shape:
            keep = mask.reshape(mask.shape + (1,) * (a.ndim - 2)).astype(np.float64)
            a, b = a * keep, b * keep
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        finite_ref, finite_got = np.isfinite(a).all(axis=1), np.isfinite(b).all(axis=1)
        if (finite_ref & ~finite_got).any():
            return 0.0  # inf or nan where fp32 has a number
        a, b = a[finite_ref], b[finite_ref]  # rows fp32 itself cannot give say nothing about int8
        if not len(a):
            continue
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        both_zero = (na == 0) & (nb == 0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            cos = np.where(both_zero, 1.0, np.where((na == 0) | (nb == 0), 0.0,
                                                      (a * b).sum(axis=1) / (na * nb)))
        lowest = min(lowest, float(np.nan_to_num(cos, nan=0.0).min()))
        compared += 1
    if compared == 0:
        raise AxonError("The int8 gate found no floating-point output to compare with fp32.",
                        hint="Serve it in fp32 (--precision fp32).")
    return lowest


def package_sample_texts(version_dir: Path, manifest: Manifest, *, sha256: bool = False) -> list[str]:
    """The texts of the package's ``samples/reference.json``, read verified against the manifest
    (none when it has no such file, or the file says nothing usable)."""
    entries = {f.path: f for f in manifest.files}
    for rel in REFERENCE_PATHS:
        if rel in entries and entries[rel].size <= MAX_SAMPLE_BYTES:
            try:
                doc = json.loads(read_verified_file(version_dir, entries[rel], sha256=sha256))
            except ValueError:
                return []
            texts = (doc.get("inputs") or {}).get("texts") if isinstance(doc, dict) else None
            return [t for t in texts if isinstance(t, str)][:64] if isinstance(texts, list) else []
    return []
