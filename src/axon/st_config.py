"""Reading a sentence-transformers repository's configuration into the manifest, at install.

What ``SentenceTransformer(path).encode`` does is spelled out by these files, and each is read:

* ``modules.json``: the module chain. ``Transformer`` (the ONNX graph), then ``Pooling``, then any
  ``Dense`` layers, then an optional ``Normalize``. Any other module (``LayerNorm``,
  ``WordWeights``, ``Router``, ...) is refused at install: serving the chain without it would give
  wrong numbers with a 200.
* ``<Dense path>/config.json`` + ``model.safetensors``: sizes, bias, activation (Tanh, Identity,
  ReLU, Sigmoid, GELU; others refused), the weights checked against them at install.
* ``<pooling path>/config.json``: the pooling mode(s) (``pooling_mode``, or the older
  ``pooling_mode_*`` flags, in the library's order) and ``include_prompt``.
* ``<transformer path>/sentence_bert_config.json``: ``max_seq_length`` (truncation) and
  ``do_lower_case``.
* ``config_sentence_transformers.json``: ``prompts`` and ``default_prompt_name``.

The result goes into the manifest's ``preprocessing`` (``max_length``, ``lowercase``, ``prompts``,
``default_prompt_name``) and ``postprocessing`` (``{type: pooling, modes, include_prompt,
normalize, output}``); :mod:`axon.model.pooling` and :class:`axon.model.inference.TextEncoder` apply it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from axon.errors import InvalidModelError
from axon.model.package_json import read_package_json
from axon.model.pooling import ACTIVATIONS, POOLING_MODES, DenseSpec, dense_layer

__all__ = ["STConfig", "read_st_config"]

# Legacy flags, in the order sentence-transformers concatenates them.
_LEGACY_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                 "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                 "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_SUPPORTED = ("Transformer", "Pooling", "Dense", "Normalize")
_HINTS: dict[str, str] = {}


@dataclass
class STConfig:
    """What the package's sentence-transformers files say (None: the file did not say)."""

    modes: tuple[str, ...]
    include_prompt: bool = True
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dense: list[DenseSpec] = field(default_factory=list)

    def preprocessing(self) -> dict[str, Any]:
        """Keys added to the tokenizer preprocessing (max_length only when the config sets it)."""
        pre: dict[str, Any] = {}
        if self.max_seq_length is not None:
            pre["max_length"] = self.max_seq_length
        if self.do_lower_case:
            pre["lowercase"] = True
        if self.prompts:
            pre["prompts"] = dict(self.prompts)
        if self.default_prompt_name is not None:
            pre["default_prompt_name"] = self.default_prompt_name
        return pre

    def postprocessing(self, output: str) -> dict[str, Any]:
        post: dict[str, Any] = {"type": "pooling", "modes": list(self.modes), "include_prompt": self.include_prompt}
        if self.dense:
            post["dense"] = [{"weights": d.weights, "in_features": d.in_features, "out_features": d.out_features,
                              "bias": d.bias, "activation": d.activation} for d in self.dense]
        post.update({"normalize": self.normalize, "output": output, "source": "sentence-transformers"})
        return post


def _module_file(path: str, name: str) -> str:
    rel = str(PurePosixPath(path or ".") / name) if path not in ("", ".", "./") else name
    if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
        raise InvalidModelError(f"modules.json names a module path {path!r} outside the package.")
    return rel


def _short_type(entry: Any) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise InvalidModelError(f"modules.json holds an entry without a module type: {entry!r}.")
    kind: str = entry["type"]
    return kind.rsplit(".", 1)[-1]


def _modes(cfg: dict[str, Any], where: str) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_FLAGS.items() if cfg.get(key)]
        modes = modes or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else mode
    if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
        raise InvalidModelError(f"{where}: pooling_mode {mode!r} is not a mode or a list of modes.")
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise InvalidModelError(f"{where}: pooling mode(s) {bad} are not supported "
                                f"(known: {', '.join(POOLING_MODES)}).")
    return tuple(modes)


def read_st_config(staging: Path, files: set[str]) -> STConfig | None:
    """The sentence-transformers configuration of a staged package (None: no modules.json).

    Raises:
        InvalidModelError: a module the server does not implement, or a malformed config file.
    """
    if "modules.json" not in files:
        return None
    modules = read_package_json(staging, files, "modules.json", required=True)
    if not isinstance(modules, list) or not modules:
        raise InvalidModelError("The package's modules.json is not a list of modules.")
    entries = sorted(modules, key=lambda m: m.get("idx", 0) if isinstance(m, dict) else 0)
    types = [_short_type(m) for m in entries]
    for t, entry in zip(types, entries, strict=True):
        if t not in _SUPPORTED:
            hint = _HINTS.get(t, "only Transformer, Pooling, Dense and Normalize are implemented")
            where = entry.get("path") or entry["type"]
            raise InvalidModelError(f"The package's modules.json has a {t} module ({where}), which axon and MLOS "
                                    "Core do not implement; serving the model without it would give wrong "
                                    "embeddings.", hint=hint[0].upper() + hint[1:] + ".")
    if types[0] != "Transformer" or types.count("Transformer") != 1:
        raise InvalidModelError(f"The package's modules.json must start with its one Transformer module (has {types}).")
    if types[1:2] != ["Pooling"] or types.count("Pooling") != 1:
        raise InvalidModelError(f"The package's modules.json must have one Pooling module right after the "
                                f"Transformer (has {types}).")
    n_dense = next((i for i, t in enumerate(types[2:]) if t != "Dense"), len(types) - 2)
    if types[2 + n_dense:] not in ([], ["Normalize"]):
        raise InvalidModelError(f"The package's modules.json may have only Dense modules, then one Normalize, after "
                                f"its Pooling (has {types}).")

    tr_path = str(entries[0].get("path") or "")
    # At the root it may be absent (the library's defaults); in a module directory (older
    # repositories' 0_Transformer/) it holds what the library reads, so it must be there.
    sbert = read_package_json(staging, files, _module_file(tr_path, "sentence_bert_config.json"),
                  required=tr_path not in ("", ".", "./")) or {}
    if not isinstance(sbert, dict):
        raise InvalidModelError("The package's sentence_bert_config.json is not a JSON object.")
    max_seq = sbert.get("max_seq_length")
    if max_seq is not None and (not isinstance(max_seq, int) or isinstance(max_seq, bool) or max_seq < 1):
        raise InvalidModelError(f"sentence_bert_config.json: max_seq_length {max_seq!r} is not a positive integer.")
    if sbert.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise InvalidModelError(f"sentence_bert_config.json: module_output_name {sbert['module_output_name']!r} is "
                                "not supported (only token_embeddings).")

    pool_rel = _module_file(str(entries[1].get("path") or ""), "config.json")
    pool_cfg = read_package_json(staging, files, pool_rel, required=True)
    if not isinstance(pool_cfg, dict):
        raise InvalidModelError(f"The package's {pool_rel!r} is not a JSON object.")
    include_prompt = pool_cfg.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise InvalidModelError(f"{pool_rel}: include_prompt {include_prompt!r} is not true or false.")

    modes = _modes(pool_cfg, pool_rel)
    dim = pool_cfg.get("embedding_dimension", pool_cfg.get("word_embedding_dimension"))
    width = dim * len(modes) if isinstance(dim, int) and not isinstance(dim, bool) else None
    dense = []
    for entry in entries[2:2 + n_dense]:
        spec = _dense(staging, files, str(entry.get("path") or ""))
        if width is not None and spec.in_features != width:
            raise InvalidModelError(f"{spec.weights}: the Dense layer takes {spec.in_features} features, but what "
                                    f"comes before it gives {width}.")
        width = spec.out_features
        dense.append(spec)

    normalize = types[-1] == "Normalize"
    if normalize:
        norm_rel = _module_file(str(entries[-1].get("path") or ""), "config.json")
        norm_cfg = read_package_json(staging, files, norm_rel, required=False) or {}
        if not isinstance(norm_cfg, dict) or norm_cfg.get("module_input_name", "sentence_embedding") != \
                "sentence_embedding" or norm_cfg.get("module_output_name") not in (None, "sentence_embedding"):
            raise InvalidModelError(f"{norm_rel}: only a Normalize of the sentence embedding is supported.")

    st = read_package_json(staging, files, "config_sentence_transformers.json", required=False) or {}
    if not isinstance(st, dict):
        raise InvalidModelError("The package's config_sentence_transformers.json is not a JSON object.")
    prompts = st.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise InvalidModelError("config_sentence_transformers.json: prompts must map names to strings.")
    default = st.get("default_prompt_name")
    if default is not None and (not isinstance(default, str) or default not in prompts):
        raise InvalidModelError(f"config_sentence_transformers.json: default_prompt_name {default!r} is not one of "
                                f"its prompts ({sorted(prompts)}).")
    return STConfig(modes=modes, include_prompt=include_prompt, normalize=normalize,
                    max_seq_length=max_seq, do_lower_case=bool(sbert.get("do_lower_case", False)),
                    prompts=dict(prompts), default_prompt_name=default, dense=dense)


def _dense(staging: Path, files: set[str], path: str) -> DenseSpec:
    """A Dense module's config and weights, checked (the weights are read and their shapes compared)."""
    cfg_rel = _module_file(path, "config.json")
    cfg = read_package_json(staging, files, cfg_rel, required=True)
    if not isinstance(cfg, dict):
        raise InvalidModelError(f"The package's {cfg_rel!r} is not a JSON object.")
    in_features, out_features = cfg.get("in_features"), cfg.get("out_features")
    if not (isinstance(in_features, int) and isinstance(out_features, int)) or isinstance(in_features, bool) \
            or isinstance(out_features, bool) or min(in_features, out_features) < 1:
        raise InvalidModelError(f"{cfg_rel}: in_features and out_features must be positive integers.")
    if cfg.get("use_residual"):
        raise InvalidModelError(f"{cfg_rel}: a Dense layer with use_residual is not implemented.")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise InvalidModelError(f"{cfg_rel}: only a Dense layer on the sentence embedding is implemented "
                                    f"({key} is {cfg[key]!r}).")
    act_name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    activation = ACTIVATIONS.get(act_name) if isinstance(act_name, str) else None
    if activation is None:
        raise InvalidModelError(f"{cfg_rel}: activation {act_name!r} is not implemented (implemented: "
                                f"{', '.join(k.rsplit('.', 1)[-1] for k in ACTIVATIONS)}).")
    weights = _module_file(path, "model.safetensors")
    if weights not in files:
        old = _module_file(path, "pytorch_model.bin")
        raise InvalidModelError(f"The Dense module {path!r} has no model.safetensors"
                                + (" (only pytorch_model.bin, a pickle axon does not load)" if old in files else "")
                                + ".", hint="Save the model again with safe_serialization=True (the default).")
    spec = DenseSpec(weights, in_features, out_features, bool(cfg.get("bias", True)), activation)
    dense_layer(spec, (staging / weights).read_bytes())  # the shapes must be what the config says
    return spec
