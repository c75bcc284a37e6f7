"""Turn a fetched package (files in a staging directory) into a manifest."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from axon.errors import InvalidModelError
from axon.manifest import FileEntry, Manifest, safe_relative_path
from axon.onnx_signature import check_external_data, load_graph, signature_of
from axon.sources.base import FetchResult
from axon.spec import ModelSpec

__all__ = ["build_manifest", "pick_entrypoint"]

DEFAULT_MAX_LENGTH = 512


def pick_entrypoint(files: list[str], preferred: str | None = None) -> str:
    if preferred:
        if preferred not in files:
            raise InvalidModelError(f"Entrypoint {preferred!r} is not among the package's files.",
                                    hint=f"Files: {', '.join(sorted(files)[:10])}")
        return preferred
    for candidate in ("model.onnx", "onnx/model.onnx"):
        if candidate in files:
            return candidate
    onnx_files = sorted(f for f in files if f.lower().endswith(".onnx"))
    if len(onnx_files) == 1:
        return onnx_files[0]
    if not onnx_files:
        raise InvalidModelError("The package holds no .onnx file.",
                                hint="Export the model to ONNX first (torch.onnx.export or optimum-cli export onnx).")
    raise InvalidModelError(f"The package holds several ONNX files ({', '.join(onnx_files[:6])}) and no model.onnx.",
                            hint="Choose one with --entrypoint PATH")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _preprocessing(staging: Path, files: set[str]) -> dict[str, Any] | None:
    tokenizer = next((f for f in ("tokenizer.json", "onnx/tokenizer.json") if f in files), None)
    if tokenizer is None:
        return None
    max_length = DEFAULT_MAX_LENGTH
    cfg = _read_json(staging / PurePosixPath(tokenizer).with_name("tokenizer_config.json"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model_max_length"), int) and cfg["model_max_length"] > 0:
        max_length = min(cfg["model_max_length"], DEFAULT_MAX_LENGTH)
    return {"type": "tokenizer", "tokenizer": tokenizer, "max_length": max_length, "truncation": True,
            "padding": "longest"}


def _postprocessing(staging: Path, files: set[str], output_names: list[str]) -> dict[str, Any] | None:
    modules = _read_json(staging / "modules.json") if "modules.json" in files else None
    if isinstance(modules, list):
        types = " ".join(str(m.get("type", "")) for m in modules if isinstance(m, dict))
        if "Pooling" in types:
            return {"type": "mean_pooling", "normalize": "Normalize" in types,
                    "output": "last_hidden_state" if "last_hidden_state" in output_names else output_names[0]}
    config = _read_json(staging / "config.json") if "config.json" in files else None
    if isinstance(config, dict) and isinstance(config.get("id2label"), dict):
        archs = " ".join(config.get("architectures") or [])
        if "ForSequenceClassification" in archs:
            try:
                labels = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
            except (TypeError, ValueError):
                labels = list(config["id2label"].values())
            return {"type": "softmax", "labels": labels}
    return None


def build_manifest(spec: ModelSpec, staging: Path, fetched: FetchResult, *, entrypoint: str | None = None,
                   description: str | None = None) -> Manifest:
    """Read the ONNX signature and assemble the manifest for a fully staged package."""
    names = sorted(fetched.digests)
    for rel in names:
        safe_relative_path(rel, where="package")
    entry = pick_entrypoint(names, entrypoint or fetched.entrypoint)
    model = load_graph(staging / entry)
    sig = signature_of(model, PurePosixPath(entry).name)
    # Every tensor's external data (initializers, node attributes, subgraphs, functions) must be a
    # file of the package, named relative to the entrypoint's directory.
    weights = [entry, *(p for p in check_external_data(model, entry, fetched.digests) if p != entry)]
    del model
    files = [FileEntry(rel, d.size, d.sha256, d.xxh3_128) for rel, d in fetched.digests.items()]
    fileset = set(names)
    out_names = [t.name for t in sig.outputs]
    extra = fetched.extra
    return Manifest(
        namespace=spec.namespace,
        name=spec.name,
        version=spec.version,
        description=description or fetched.description,
        license=fetched.license,
        source=fetched.source,
        entrypoint=entry,
        opset=sig.opset,
        files=files,
        inputs=sig.inputs,
        outputs=sig.outputs,
        preprocessing=extra.get("preprocessing") or _preprocessing(staging, fileset),
        postprocessing=extra.get("postprocessing") or _postprocessing(staging, fileset, out_names),
        requirements=extra.get("requirements") or {
            "memory_bytes": sum(fetched.digests[w].size for w in weights), "gpu": "optional"},
    )
