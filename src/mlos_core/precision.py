"""``--precision int8``: the int8 variant of a verified model, served only when it passes its gate.

At every load the variant is made again from the verified fp32 graph in memory
(:func:`axon.model.quantize.quantize_int8`), so nothing is stored that would have to be trusted
later and nothing is ever written into the repository. Both sessions then run the gate's inputs
(the package's sample texts and a fixed set; seeded tensors for a tensor model) and the served
outputs, pooling included, are compared: below ``--int8-min-cosine`` the variant is refused and
the model is served in fp32, which ``GET /models`` and ``/metrics`` say, as they say the cosine
measured when it passes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from axon.errors import AxonError
from axon.model.inference import inline_external_data, postprocess
from axon.model.pooling import DenseLayer
from axon.model.quantize import (
    INT8_RECIPE,
    gate_tensors,
    gate_texts,
    lowest_cosine,
    package_sample_texts,
    quantize_int8,
)
from mlos_core.errors import ApiError
from mlos_core.repository import Located, VerifiedModel
from mlos_core.runtime import SessionInfo, create_session
from mlos_core.settings import ServerSettings

__all__ = ["PrecisionReport", "int8_variant"]

log = logging.getLogger("mlos_core.precision")


@dataclass(frozen=True)
class PrecisionReport:
    """What ``GET /models`` says about a model's precision."""

    requested: str
    served: str
    min_cosine: float | None = None  # the gate's threshold (int8 only)
    cosine: float | None = None  # the lowest cosine of the variant's outputs to fp32's, where measured
    samples: int = 0  # inputs the gate ran
    refused: str | None = None  # why the int8 variant is not served
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "served": self.served}
        if self.requested == "int8":
            out.update({"recipe": INT8_RECIPE, "min_cosine": self.min_cosine,
                        "cosine": None if self.cosine is None else round(self.cosine, 6), "samples": self.samples,
                        "refused": self.refused, "build_seconds": round(self.build_seconds, 3)})
        return out


def _served_outputs(info: SessionInfo, located: Located, feeds: dict[str, np.ndarray],
                    dense: tuple[DenseLayer, ...]) -> dict[str, np.ndarray]:
    names = [o.name for o in info.session.get_outputs()]
    outputs = dict(zip(names, info.session.run(names, feeds), strict=True))
    outputs.update(postprocess(located.manifest.postprocessing, outputs, feeds, dense=dense))
    return outputs


def _gate_feeds(located: Located, text: Any, sha256: bool) -> dict[str, np.ndarray]:
    manifest = located.manifest
    if text is None:
        return gate_tensors(manifest.inputs)
    texts = gate_texts(package_sample_texts(located.version_dir, manifest, sha256=sha256))
    post = (manifest.postprocessing or {}).get("type")
    if post in ("classification", "softmax"):  # cross-encoders score pairs; a pair is valid input either way
        return dict(text.encode([(a, b) for a, b in zip(texts, texts[1:] + texts[:1], strict=True)]))
    return dict(text.encode(texts))


def int8_variant(model: VerifiedModel, fp32: SessionInfo, located: Located, text: Any,
                 dense: tuple[DenseLayer, ...], settings: ServerSettings, *, sha256: bool = False
                 ) -> tuple[SessionInfo, PrecisionReport]:
    """The session to serve and what to say about it: the int8 one when its outputs keep
    ``settings.int8_min_cosine`` to *fp32*'s on the gate's inputs, else *fp32* itself."""
    threshold = settings.int8_min_cosine
    spec = located.manifest.spec_text
    t0 = time.perf_counter()
    samples = 0
    try:
        if model.files:
            inline_external_data(model)
        proto = quantize_int8(model.proto)
        int8 = create_session(proto.SerializeToString(), settings.device,
                              intra_op_threads=settings.session_threads,
                              intra_op_spinning=settings.intra_op_spinning)
        del proto
        feeds = _gate_feeds(located, text, sha256)
        samples = len(next(iter(feeds.values())))
        cosine = lowest_cosine(_served_outputs(fp32, located, feeds, dense),
                               _served_outputs(int8, located, feeds, dense), feeds.get("attention_mask"))
    except (AxonError, ApiError) as exc:
        why = f"int8 could not be made: {exc.message}"
        log.warning("%s: %s; serving fp32", spec, why)
        return fp32, PrecisionReport("int8", "fp32", threshold, None, samples, why, time.perf_counter() - t0)
    took = time.perf_counter() - t0
    if not cosine >= threshold:
        why = f"int8 outputs reach only cosine {cosine:.4f} to fp32 on {samples} inputs (the gate is {threshold})"
        log.warning("%s: %s; serving fp32", spec, why)
        return fp32, PrecisionReport("int8", "fp32", threshold, cosine, samples, why, took)
    int8.note = "; ".join(n for n in (int8.note, f"int8 (cosine {cosine:.4f} to fp32)") if n)
    return int8, PrecisionReport("int8", "int8", threshold, cosine, samples, None, took)
