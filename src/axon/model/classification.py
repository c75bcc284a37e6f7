"""Sequence classifiers and cross-encoders: what their own libraries do to the logits.

Read at install from the package's configuration into the manifest's postprocessing,
``{type: classification, task, function, labels, output}``, and applied by ``axon run`` and the
server (:func:`scores`, :func:`top_labels`):

* **cross-encoders** (a sentence-transformers ``CrossEncoder``: ``config_sentence_transformers.json``
  says ``model_type: CrossEncoder``, or ``sentence_bert_config.json`` a ``sequence-classification``
  transformer task, or ``config.json`` carries the library's activation): the activation
  ``CrossEncoder.predict`` applies, from ``activation_fn`` (``config_sentence_transformers.json``,
  then ``config.json``'s ``sentence_transformers.activation_fn``, then the pre-v4
  ``sbert_ce_default_activation_function``), else sigmoid for one label and none for more, as
  the library defaults. Only ``torch.nn`` Sigmoid, Identity and Tanh are implemented; any other is
  refused at install (the library itself would fall back to its default for an untrusted path).
* **text classifiers** (``*ForSequenceClassification`` with ``id2label``): what
  ``transformers.pipeline("text-classification")`` applies by default: none for
  ``problem_type: regression``, sigmoid for ``multi_label_classification`` or one label, softmax
  otherwise.

Labels come from ``id2label`` in id order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from axon.errors import InvalidManifestError, InvalidModelError
from axon.model.package_json import read_package_json

__all__ = ["FUNCTIONS", "check_against_graph", "check_spec", "classification_postprocessing", "is_cross_encoder",
           "is_sequence_classifier", "scores", "top_labels"]

FUNCTIONS = ("softmax", "sigmoid", "tanh", "none")
_TORCH_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "none", "Tanh": "tanh"}


def is_sequence_classifier(config: Any) -> bool:
    """A transformers ``*ForSequenceClassification`` checkpoint, by its config.json."""
    archs = config.get("architectures") if isinstance(config, dict) else None
    return any("ForSequenceClassification" in str(a) for a in archs or [])


def is_cross_encoder(staging: Path, files: set[str]) -> bool:
    """A sentence-transformers CrossEncoder package (not an embedding model, whatever modules.json says)."""
    st = read_package_json(staging, files, "config_sentence_transformers.json")
    if isinstance(st, dict) and st.get("model_type") == "CrossEncoder":
        return True
    sbert = read_package_json(staging, files, "sentence_bert_config.json")
    return isinstance(sbert, dict) and sbert.get("transformer_task") == "sequence-classification"


def _activation(path: Any, where: str) -> str:
    name = path.rsplit(".", 1)[-1] if isinstance(path, str) else None
    if not isinstance(path, str) or not path.startswith("torch.") or name not in _TORCH_ACTIVATIONS:
        raise InvalidModelError(f"The cross-encoder's activation {path!r} ({where}) is not implemented; serving "
                                "its logits with another would give wrong scores.",
                                hint="Only torch.nn Sigmoid, Identity and Tanh are implemented.")
    return _TORCH_ACTIVATIONS[name]


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label")
    num = config.get("num_labels")
    if isinstance(id2label, dict) and id2label:
        try:
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            raise InvalidModelError("config.json: id2label keys must be label ids (integers).") from None
    if isinstance(num, int) and not isinstance(num, bool) and num > 0:
        return [f"LABEL_{i}" for i in range(num)]
    return ["LABEL_0"]


def classification_postprocessing(staging: Path, files: set[str], output: str) -> dict[str, Any] | None:
    """The manifest's postprocessing for a classifier or cross-encoder package (None: neither).

    Raises:
        InvalidModelError: a cross-encoder activation that is not implemented, or a modules.json
            with modules after the classifier.
    """
    config = read_package_json(staging, files, "config.json")
    if not isinstance(config, dict):
        return None
    cross = is_cross_encoder(staging, files)
    st_config = read_package_json(staging, files, "config_sentence_transformers.json")
    st_key = config.get("sentence_transformers")
    legacy = config.get("sbert_ce_default_activation_function")
    cross = cross or (isinstance(st_key, dict) and "activation_fn" in st_key) or legacy is not None
    if not cross and not (is_sequence_classifier(config) and isinstance(config.get("id2label"), dict)):
        return None
    labels = _labels(config)
    if cross:
        modules = read_package_json(staging, files, "modules.json")
        if isinstance(modules, list) and len(modules) > 1:
            types = [str(m.get("type", "?")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
            raise InvalidModelError(f"The cross-encoder's modules.json has modules after its Transformer ({types}), "
                                    "which axon and MLOS Core do not implement; its scores would be wrong.")
        if isinstance(st_config, dict) and (st_config.get("prompts") or st_config.get("default_prompt_name")):
            raise InvalidModelError("The cross-encoder has prompts (config_sentence_transformers.json), which axon "
                                    "and MLOS Core do not apply to text pairs; its scores would be wrong.",
                                    hint="Remove the prompts if the model was not trained with them.")
        if isinstance(st_config, dict) and st_config.get("activation_fn") is not None:
            function = _activation(st_config["activation_fn"], "config_sentence_transformers.json")
        elif isinstance(st_key, dict) and st_key.get("activation_fn") is not None:
            function = _activation(st_key["activation_fn"], "config.json sentence_transformers")
        elif legacy is not None:
            function = _activation(legacy, "config.json sbert_ce_default_activation_function")
        else:
            function = "sigmoid" if len(labels) == 1 else "none"
        task = "cross-encoder"
    else:
        problem = config.get("problem_type")
        if problem == "regression":
            function = "none"
        elif problem == "multi_label_classification" or len(labels) == 1:
            function = "sigmoid"
        else:
            function = "softmax"
        task = "text-classification"
    return {"type": "classification", "task": task, "function": function, "labels": labels, "output": output}


def check_spec(spec: dict[str, Any]) -> tuple[str, list[str]]:
    """(function, labels) of a manifest's classification postprocessing, validated."""
    function, labels = spec.get("function", "softmax"), spec.get("labels") or []
    if function not in FUNCTIONS:
        raise InvalidManifestError(f"Invalid manifest: classification function {function!r} is not one of "
                                   f"{', '.join(FUNCTIONS)}.")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise InvalidManifestError("Invalid manifest: classification 'labels' must be a non-empty list of strings.")
    return function, labels


def check_against_graph(spec: dict[str, Any] | None, outputs: dict[str, Any]) -> None:
    """A classification postprocessing fits the graph: a known function, string labels, an output
    the graph has, and (when the graph says its width) one label per column; *outputs* maps the
    graph's output names to their shapes (dimensions may be symbolic).

    Raises:
        InvalidModelError: it does not (registered as it is, every request would fail or rank by
            the wrong column).
    """
    if not spec or spec.get("type") != "classification":
        return
    try:
        _, labels = check_spec(spec)
    except InvalidManifestError as exc:
        raise InvalidModelError(exc.message) from None
    name = spec.get("output") or next(iter(outputs), None)
    if name not in outputs:
        raise InvalidModelError(f"The classification output {name!r} is not an output of the graph "
                                f"({', '.join(outputs) or 'none'}).")
    shape = list(outputs[name] or [])
    width = shape[-1] if len(shape) >= 2 else 1
    if labels and isinstance(width, int) and width > 0 and width != len(labels):
        raise InvalidModelError(f"The classification output {name!r} has {width} columns but the manifest names "
                                f"{len(labels)} labels.")


def scores(function: str, logits: np.ndarray) -> np.ndarray:
    """*logits* (rows x labels) through the model's function, in float32."""
    x = logits.astype(np.float32, copy=False)
    if function == "softmax":
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        normalized: np.ndarray = z / z.sum(axis=-1, keepdims=True)
        return normalized
    if function == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-x) = inf for a very negative logit: the score is 0
            return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if function == "tanh":
        return np.tanh(x)
    return x.copy()


def top_labels(rows: np.ndarray, labels: list[str], top_k: int | None) -> list[list[dict[str, Any]]]:
    """Per row, ``{"label", "score"}`` by falling score, the first *top_k* (None: all)."""
    out = []
    for row in np.asarray(rows, np.float32).reshape(len(rows), -1):
        order = np.argsort(-row, kind="stable")[: top_k if top_k is not None else len(row)]
        out.append([{"label": labels[i] if i < len(labels) else f"LABEL_{i}", "score": float(row[i])}
                    for i in order])
    return out
