"""Sentence-embedding pooling: the one numpy reference ``axon run`` and MLOS Core both use.

The math follows sentence-transformers' ``Pooling`` module (padded path) mode by mode, so a
package read from a sentence-transformers repository gives what ``SentenceTransformer.encode``
gives. MLOS Core fuses the same modes into the served graph (``mlos_core.graph_opt``); a test
holds the two to the library.

A manifest names pooling in one of two shapes:

* ``{type: pooling, modes: [cls], include_prompt: true, normalize: true, output: last_hidden_state}``
* ``{type: mean_pooling, normalize: true, output: last_hidden_state}`` (older manifests: mean pooling,
  normalised unless ``normalize: false``).

``pooling`` may list ``dense`` layers (sentence-transformers' ``Dense`` modules), applied in order
after pooling and before normalisation: ``{weights: 2_Dense/model.safetensors, sha256, in_features,
out_features, bias, activation}``; the weights file is one of the package's (hashed) files and
is read verified (:func:`load_dense`).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from axon.errors import InvalidManifestError, InvalidModelError

__all__ = ["ACTIVATIONS", "POOLING_MODES", "DenseLayer", "DenseSpec", "PoolingSpec", "exclude_prompt", "load_dense",
           "pool", "pooling_spec", "read_safetensors"]

# sentence-transformers' Dense activation classes -> our names (the ones numpy and ONNX both compute).
ACTIVATIONS = {"torch.nn.modules.activation.Tanh": "tanh", "torch.nn.modules.linear.Identity": "identity",
               "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.Sigmoid": "sigmoid",
               "torch.nn.modules.activation.GELU": "gelu"}


@dataclass(frozen=True)
class DenseSpec:
    weights: str  # package path of the safetensors file
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass(frozen=True)
class DenseLayer:
    """A Dense layer's verified weights: ``activation(x @ weight.T + bias)``."""

    weight: np.ndarray  # [out, in] float32
    bias: np.ndarray | None  # [out] float32
    activation: str

# sentence-transformers' names, in the order its legacy ``pooling_mode_*`` flags concatenate.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


@dataclass(frozen=True)
class PoolingSpec:
    modes: tuple[str, ...]
    normalize: bool
    include_prompt: bool
    output: str | None
    dense: tuple[DenseSpec, ...] = ()


def pooling_spec(post: dict[str, Any] | None) -> PoolingSpec | None:
    """The pooling a manifest's postprocessing asks for (None: it asks for none).

    Raises:
        InvalidManifestError: an unknown mode or a malformed entry.
    """
    if not post:
        return None
    kind = post.get("type")
    output = post.get("output")
    if output is not None and not isinstance(output, str):
        raise InvalidManifestError(f"Invalid manifest: postprocessing output {output!r} is not a string.")
    if kind == "mean_pooling":
        return PoolingSpec(("mean",), bool(post.get("normalize", True)), True, output)
    if kind != "pooling":
        return None
    modes = post.get("modes")
    if isinstance(modes, str):
        modes = [modes]
    if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
        raise InvalidManifestError("Invalid manifest: postprocessing 'modes' must be a non-empty list of "
                                   f"pooling modes ({', '.join(POOLING_MODES)}).")
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise InvalidManifestError(f"Invalid manifest: unknown pooling mode(s) {bad}; "
                                   f"known: {', '.join(POOLING_MODES)}.")
    return PoolingSpec(tuple(modes), bool(post.get("normalize", False)), bool(post.get("include_prompt", True)),
                       output, _dense_specs(post.get("dense")))


def _dense_specs(raw: Any) -> tuple[DenseSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidManifestError("Invalid manifest: postprocessing 'dense' must be a list of layers.")
    out = []
    for d in raw:
        ok = (isinstance(d, dict) and isinstance(d.get("weights"), str)
              and all(isinstance(d.get(k), int) and not isinstance(d.get(k), bool) and d[k] > 0
                      for k in ("in_features", "out_features"))
              and isinstance(d.get("bias", True), bool) and d.get("activation") in ACTIVATIONS.values())
        if not ok:
            raise InvalidManifestError(f"Invalid manifest: dense layer {d!r} needs weights, in_features, "
                                       f"out_features, bias and an activation ({', '.join(ACTIVATIONS.values())}).")
        out.append(DenseSpec(d["weights"], d["in_features"], d["out_features"], d.get("bias", True), d["activation"]))
    return tuple(out)


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def read_safetensors(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The float tensors of a safetensors file (header: u64 length, JSON; then the raw bytes).

    Raises:
        InvalidModelError: a malformed file or a dtype other than F32, F16, BF16, F64.
    """
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name!r} has dtype {info['dtype']}")
            start, stop = (8 + n + int(o) for o in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            if not 8 + n <= start <= stop <= len(data) or stop - start != math.prod(shape) * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {name!r} lies outside the file or has the wrong size")
            arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start).reshape(shape)
            if info["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[name] = arr.astype(np.float32)
        return out
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise InvalidModelError(f"{where} is not a safetensors file axon can read ({exc}).") from None


def dense_layer(spec: DenseSpec, data: bytes) -> DenseLayer:
    """Check a Dense layer's weights against its spec.

    Raises:
        InvalidModelError: shapes or names that are not ``linear.weight`` [out, in] (+ ``linear.bias`` [out]).
    """
    tensors = read_safetensors(data, spec.weights)
    weight, bias = tensors.get("linear.weight"), tensors.get("linear.bias")
    if weight is None or weight.shape != (spec.out_features, spec.in_features) or (
            spec.bias and (bias is None or bias.shape != (spec.out_features,))):
        raise InvalidModelError(f"{spec.weights}: expected linear.weight [{spec.out_features}, {spec.in_features}]"
                                f"{' and linear.bias' if spec.bias else ''}, found "
                                f"{ {k: list(v.shape) for k, v in tensors.items()} }.")
    return DenseLayer(np.ascontiguousarray(weight), bias if spec.bias else None, spec.activation)


def load_dense(spec: PoolingSpec | None, read: Any) -> tuple[DenseLayer, ...]:
    """The verified Dense layers of *spec*; *read(path)* returns a package file's verified bytes."""
    if spec is None:
        return ()
    return tuple(dense_layer(d, read(d.weights)) for d in spec.dense)


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    out: np.ndarray
    if activation == "tanh":
        out = np.tanh(x)
    elif activation == "relu":
        out = np.maximum(x, np.float32(0))
    elif activation == "sigmoid":
        out = np.float32(1) / (np.float32(1) + np.exp(-x))
    elif activation == "gelu":
        erf = np.vectorize(math.erf, otypes=[np.float64])
        out = (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)
    else:
        out = x
    return out


def exclude_prompt(mask: np.ndarray, prompt_length: int | None) -> np.ndarray:
    """The pooling mask with the prompt's tokens left out (sentence-transformers'
    ``_exclude_prompt_from_mask``: the first *prompt_length* positions, after any left padding)."""
    if not prompt_length:
        return mask
    mask = mask.copy()
    pad = np.argmax(mask.astype(np.int32), axis=1)
    if int(pad.sum()) == 0:
        mask[:, :prompt_length] = 0
    else:
        positions = np.arange(mask.shape[1])[None, :]
        mask[positions < (pad + prompt_length)[:, None]] = 0
    return mask


def pool(hidden: np.ndarray, attention_mask: np.ndarray | None, spec: PoolingSpec, *,
         prompt_length: int | None = None, dense: tuple[DenseLayer, ...] = ()) -> np.ndarray:
    """Pooled [batch, len(modes) * hidden] float32 rows from [batch, seq, hidden] token embeddings
    (then through *dense*, the verified layers of ``spec.dense``, then normalised if asked).

    Raises:
        InvalidModelError: *spec* lists Dense layers whose weights were not given.
    """
    if len(dense) != len(spec.dense):
        raise InvalidModelError("The manifest's pooling has Dense layers whose weights were not loaded.")
    hidden = hidden.astype(np.float32, copy=False)
    batch, seq = hidden.shape[:2]
    original = (attention_mask if attention_mask is not None and attention_mask.shape[-1] == seq
                else np.ones((batch, seq), np.int64))
    mask = exclude_prompt(original, None if spec.include_prompt else prompt_length)
    m = mask.astype(np.float32)[..., None]
    rows = np.arange(batch)
    parts: list[np.ndarray] = []
    for mode in spec.modes:
        if mode == "cls":
            parts.append(hidden[rows, np.argmax(mask.astype(np.int32), axis=1)])
        elif mode == "max":
            parts.append(np.where(m == 0, np.float32(-np.inf), hidden).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (hidden * m).sum(axis=1)
            count = np.maximum(m.sum(axis=1), np.float32(1e-9))
            parts.append(total / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            pad = np.argmax(original.astype(np.int32), axis=1).astype(np.float32)
            weights = np.arange(1, seq + 1, dtype=np.float32)[None, :] - pad[:, None]
            wm = m * weights[..., None]
            parts.append((hidden * wm).sum(axis=1) / np.maximum(wm.sum(axis=1), np.float32(1e-9)))
        elif mode == "lasttoken":
            flipped = mask[:, ::-1]
            values, idx = flipped.max(axis=1), np.argmax(flipped, axis=1)
            idx = np.where(values == 0, seq - 1, idx)
            parts.append((hidden * m)[rows, seq - idx - 1])
        else:  # pooling_spec refuses unknown modes
            raise InvalidManifestError(f"Invalid manifest: unknown pooling mode {mode!r}.")
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    for layer in dense:
        out = out @ layer.weight.T
        if layer.bias is not None:
            out = out + layer.bias
        out = _activate(out.astype(np.float32, copy=False), layer.activation)
    if spec.normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), np.float32(1e-12))
    return out.astype(np.float32, copy=False)
