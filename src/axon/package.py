"""Turn a fetched package (files in a staging directory) into a manifest."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from axon.errors import InvalidModelError
from axon.model.onnx_signature import check_external_data, load_graph, signature_of
from axon.sources.base import FetchResult
from axon.store.manifest import FileEntry, Manifest, safe_relative_path
from axon.store.spec import ModelSpec

if TYPE_CHECKING:
    from axon.st_config import STConfig

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
                                hint="Export it on install with --export (from a safetensors checkpoint).")
    raise InvalidModelError(f"The package holds several ONNX files ({', '.join(onnx_files[:6])}) and no model.onnx.",
                            hint="Choose one with --entrypoint PATH")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _preprocessing(staging: Path, files: set[str], st: STConfig | None = None) -> dict[str, Any] | None:
    tokenizer = next((f for f in ("tokenizer.json", "onnx/tokenizer.json") if f in files), None)
    if tokenizer is None:
        if st is not None:
            raise InvalidModelError("The package is a sentence-transformers model (modules.json) without a "
                                    "tokenizer.json, so its text cannot be tokenized as the library does.")
        return None
    max_length = DEFAULT_MAX_LENGTH
    cfg = _read_json(staging / PurePosixPath(tokenizer).with_name("tokenizer_config.json"))
    model_max = cfg.get("model_max_length") if isinstance(cfg, dict) else None
    if isinstance(model_max, int) and not isinstance(model_max, bool) and model_max > 0:
        max_length = min(model_max, DEFAULT_MAX_LENGTH)
    from axon.model.classification import is_cross_encoder, is_sequence_classifier

    config = _read_json(staging / "config.json") if "config.json" in files else None
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    positions = positions if isinstance(positions, int) and not isinstance(positions, bool) and positions > 0 else None
    if st is not None or is_cross_encoder(staging, files) or is_sequence_classifier(config):
        # sentence-transformers (a CrossEncoder too) and classifiers, as their libraries truncate:
        # max_seq_length, else the tokenizer's length capped at the positions.
        limits = [v for v in (model_max, positions) if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        max_seq = st.max_seq_length if st is not None else _cross_encoder_max_seq_length(staging, files)
        max_length = max_seq or (min(limits) if limits else DEFAULT_MAX_LENGTH)
    elif positions is not None:  # never past the model's positions (a tokenizer may not say its length)
        max_length = min(max_length, positions)
    pre: dict[str, Any] = {"type": "tokenizer", "tokenizer": tokenizer, "max_length": max_length, "truncation": True,
                           "padding": "longest"}
    if st is not None:
        pre.update({k: v for k, v in st.preprocessing().items() if k != "max_length"})
    return pre


def _cross_encoder_max_seq_length(staging: Path, files: set[str]) -> int | None:
    sbert = _read_json(staging / "sentence_bert_config.json") if "sentence_bert_config.json" in files else None
    value = sbert.get("max_seq_length") if isinstance(sbert, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _postprocessing(staging: Path, files: set[str], output_names: list[str], st: STConfig | None = None
                    ) -> dict[str, Any] | None:
    if st is not None:
        token_level = next((n for n in ("last_hidden_state", "token_embeddings") if n in output_names), None)
        if token_level is None and "sentence_embedding" in output_names:
            # An export of the whole sentence-transformers pipeline (optimum's, for one): the graph
            # already pools, applies the Dense layers and normalises.
            if not st.include_prompt:
                raise InvalidModelError("The graph outputs only sentence_embedding, but the pooling leaves the "
                                        "prompt out (include_prompt: false), which needs the token embeddings.",
                                        hint="Export the model with its token embeddings (last_hidden_state).")
            return {"type": "embedding_output", "output": "sentence_embedding", "source": "sentence-transformers"}
        return st.postprocessing(token_level or output_names[0])
    from axon.model.classification import classification_postprocessing

    return classification_postprocessing(staging, files, "logits" if "logits" in output_names else output_names[0])


def _with_hashes(post: dict[str, Any] | None, fetched: FetchResult) -> dict[str, Any] | None:
    """Each Dense layer's weights file with its sha256 (it is one of the package's hashed files)."""
    for layer in (post or {}).get("dense") or []:
        layer["sha256"] = fetched.digests[layer["weights"]].sha256
    return post


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
    # A sentence-transformers repository (modules.json): read its pooling, normalisation,
    # truncation, lower-casing and prompts, or refuse a module that is not implemented.
    from axon.model.classification import is_cross_encoder
    from axon.st_config import read_st_config  # numpy: not loaded for `axon --help`

    st = None if extra.get("postprocessing") or is_cross_encoder(staging, fileset) else \
        read_st_config(staging, fileset)
    from axon.model.classification import check_against_graph

    post = extra.get("postprocessing") or _with_hashes(_postprocessing(staging, fileset, out_names, st), fetched)
    check_against_graph(post, {t.name: t.shape for t in sig.outputs})
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
        preprocessing=extra.get("preprocessing") or _preprocessing(staging, fileset, st),
        postprocessing=post,
        requirements=extra.get("requirements") or {
            "memory_bytes": sum(fetched.digests[w].size for w in weights), "gpu": "optional"},
    )
