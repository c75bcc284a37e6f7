"""``axon install … --export``: a transformers / sentence-transformers checkpoint (safetensors) into
an ONNX package, checked against PyTorch before anything is installed.

The task comes from the configuration: a CrossEncoder or ``*ForSequenceClassification`` exports
``AutoModelForSequenceClassification`` (``logits``); a sentence-transformers repository or any
other encoder exports ``AutoModel`` (``last_hidden_state``; pooling, Dense layers and
normalisation are then read from the repository's own files like for any package). The graph
takes ``input_ids``, ``attention_mask`` and, when the model's forward has them,
``token_type_ids``, with dynamic batch and sequence axes (``torch.onnx.export``, the TorchScript
exporter, opset 17). On sample texts (short, long past the model's length, multilingual, a
padded batch) ONNX Runtime's outputs must match PyTorch's within ``MAX_DIFF``, else nothing is
installed. The exporter, its versions, the task and the measured difference go into the
manifest's ``source.export``; the PyTorch weights leave the package (only the export enters the
cache).

Why not optimum's exporter: optimum-onnx (0.1) requires transformers < 4.58, which cannot be
installed next to transformers 5 and huggingface_hub 2 (what this project and the libraries it
is checked against use); it calls the same ``torch.onnx.export`` underneath.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from axon.errors import InvalidModelError, UsageError
from axon.model.package_json import read_package_json
from axon.store.fastio import FileDigest, hash_file

__all__ = ["MAX_DIFF", "WEIGHT_FILES", "export_checkpoint", "is_weight_file"]

MAX_DIFF = 1e-4
OPSET = 17
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_SAMPLES = ["Hello, MLOS!", "a", "Grüße aus Köln 😀 中文 日本語 한국어 naïve café",
            "The quick brown fox jumps over the lazy dog. " * 80]


def is_weight_file(rel: str) -> bool:
    """The checkpoint's weights (one file or shards): fetched to export, never installed."""
    name = rel.rsplit("/", 1)[-1]
    return "/" not in rel and (name in WEIGHT_FILES or (name.startswith("model-") and name.endswith(".safetensors")))


def _require() -> None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--export needs {' and '.join(missing)}, which is not installed.",
                         hint="pip install 'axon-mlos[export]' (torch and transformers; about 1 GB with CPU torch)")


def _task(staging: Path, files: set[str]) -> str:
    from axon.model.classification import is_cross_encoder, is_sequence_classifier

    config = read_package_json(staging, files, "config.json")
    if not isinstance(config, dict):
        raise InvalidModelError("The checkpoint has no config.json, so it cannot be exported.")
    if is_cross_encoder(staging, files) or is_sequence_classifier(config):
        return "text-classification"
    if "modules.json" in files:
        modules = read_package_json(staging, files, "modules.json")
        first = modules[0] if isinstance(modules, list) and modules and isinstance(modules[0], dict) else {}
        if str(first.get("path") or "") not in ("", ".", "./"):
            raise InvalidModelError(f"The sentence-transformers repository keeps its Transformer in "
                                    f"{first.get('path')!r}/; only a Transformer at the repository root is exported.")
        return "sentence-similarity"
    return "feature-extraction"


def _check_shard_index(staging: Path, files: set[str]) -> None:
    """Every shard a sharded checkpoint's index names is one of the package's own, hashed files
    (an index is a map of paths: ``/etc/x.safetensors`` or ``../`` would load weights nobody checked)."""
    if "model.safetensors.index.json" not in files:
        return
    index = read_package_json(staging, files, "model.safetensors.index.json")
    try:
        shards = set(index["weight_map"].values())
    except (KeyError, TypeError, AttributeError):
        raise InvalidModelError("model.safetensors.index.json is not a safetensors shard index.") from None
    bad = sorted(str(x) for x in shards if not isinstance(x, str) or x not in files or not is_weight_file(x))
    if bad:
        raise InvalidModelError(f"model.safetensors.index.json names shards that are not files of the package: "
                                f"{', '.join(bad[:3])}.", hint="Each shard must be a model-*.safetensors file "
                                "next to the index.")


def _keep_only_what_is_exported(staging: Path, digests: dict[str, FileDigest]) -> None:
    """Only configuration, tokenizer and sentence-transformers module files (and the weights, until
    the export is made) stay: pickles (pytorch_model.bin, training_args.bin), code and anything
    else a checkpoint directory holds never enter the cache."""
    from axon.sources.base import AUX_FILES

    for rel in list(digests):
        top = rel.split("/", 1)[0]
        module_file = "/" in rel and top[:1].isdigit() and "_" in top and rel.endswith((".json", ".safetensors"))
        if rel in AUX_FILES or is_weight_file(rel) or module_file or rel in ("README.md", "LICENSE"):
            continue
        os.unlink(staging / rel)
        del digests[rel]


def export_checkpoint(staging: Path, digests: dict[str, FileDigest]) -> dict[str, Any]:
    """Export the checkpoint in *staging* to ``staging/model.onnx``; update *digests* (the weights
    out, the export in) and return the provenance for ``source.export``.

    Raises:
        UsageError: torch / transformers are not installed.
        InvalidModelError: no weights, an unsupported layout, or an export that does not match PyTorch.
    """
    _require()
    files = set(digests)
    onnx_files = sorted(f for f in files if f.lower().endswith(".onnx"))
    if onnx_files:
        raise UsageError(f"The source already holds an ONNX model ({', '.join(onnx_files[:3])}); --export makes one "
                         "from the PyTorch weights.", hint="Install it without --export.")
    if not any(is_weight_file(f) for f in files):
        raise InvalidModelError("The checkpoint has no model.safetensors (or safetensors shards) to export.",
                                hint="Only safetensors weights are exported (pickled .bin files are not loaded).")
    _check_shard_index(staging, files)
    task = _task(staging, files)
    _keep_only_what_is_exported(staging, digests)
    import onnxruntime as ort
    import torch
    import transformers
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    try:
        model = loader.from_pretrained(str(staging), local_files_only=True, use_safetensors=True,
                                       trust_remote_code=False, attn_implementation="eager").eval()
        tok = AutoTokenizer.from_pretrained(str(staging), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidModelError(f"transformers cannot load the checkpoint: {str(exc).splitlines()[0]}") from None
    output = "logits" if task == "text-classification" else "last_hidden_state"
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    positions = getattr(model.config, "max_position_embeddings", 512) or 512
    max_length = min(int(getattr(tok, "model_max_length", positions) or positions), positions, 512)

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, args, strict=True))), output)

    def encode(texts: list[str]) -> Any:
        return tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def inputs(enc: Any) -> tuple[Any, ...]:
        return tuple(enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in names)

    # eval() on the wrapper too: the exporter restores the wrapper's mode after it, recursively,
    # and a wrapper left in training mode would turn the model's dropout back on.
    wrapped = Wrapped(model).eval()
    dyn = {0: "batch", 1: "sequence"}
    target = staging / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow: the check below decides
        torch.onnx.export(wrapped, inputs(encode(_SAMPLES[:2])), str(target), input_names=names,
                          output_names=[output], opset_version=OPSET, dynamo=False,
                          dynamic_axes={**{n: dyn for n in names}, output: dyn if output != "logits" else {0: "batch"}})
    wrapped.eval()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    diff = 0.0
    # Checked on other shapes than the traced one (a graph that only holds for the traced length fails here).
    for batch in (_SAMPLES, _SAMPLES[2:3]):
        enc = encode(batch)
        feeds = inputs(enc)
        with torch.no_grad():
            expected = wrapped(*feeds).numpy()
        (got,) = session.run([output], {n: f.numpy() for n, f in zip(names, feeds, strict=True)})
        if output == "last_hidden_state":  # past a text's end the positions are padding: not compared
            keep = enc["attention_mask"].numpy().astype(bool)
            got, expected = got[keep], expected[keep]
        diff = max(diff, float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf"))
    if not diff <= MAX_DIFF:
        target.unlink()
        raise InvalidModelError(f"The ONNX export differs from PyTorch by {diff:.3g} (more than {MAX_DIFF:g}) "
                                "on sample texts; nothing was installed.")
    for rel in [f for f in files if is_weight_file(f)]:
        os.unlink(staging / rel)
        del digests[rel]
    digests["model.onnx"] = hash_file(target)
    return {"exporter": f"torch.onnx.export (TorchScript, opset {OPSET})", "task": task, "output": output,
            "torch": str(torch.__version__), "transformers": str(transformers.__version__),
            "onnxruntime": str(ort.__version__),
            "max_abs_diff": diff, "checked_on": f"{len(_SAMPLES) + 1} sample texts in two batches"}
