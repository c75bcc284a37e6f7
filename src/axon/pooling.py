"""Sentence-embedding pooling: the one numpy reference ``axon run`` and MLOS Core both use.

The math follows sentence-transformers' ``Pooling`` module (padded path) mode by mode, so a
package read from a sentence-transformers repository gives what ``SentenceTransformer.encode``
gives. MLOS Core fuses the same modes into the served graph (``mlos_core.graph_opt``); a test
holds the two to the library.

A manifest names pooling in one of two shapes:

* ``{type: pooling, modes: [cls], include_prompt: true, normalize: true, output: last_hidden_state}``
* ``{type: mean_pooling, normalize: true, output: last_hidden_state}`` (older manifests: mean pooling,
  normalised unless ``normalize: false``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from axon.errors import InvalidManifestError

__all__ = ["POOLING_MODES", "PoolingSpec", "exclude_prompt", "pool", "pooling_spec"]

# sentence-transformers' names, in the order its legacy ``pooling_mode_*`` flags concatenate.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


@dataclass(frozen=True)
class PoolingSpec:
    modes: tuple[str, ...]
    normalize: bool
    include_prompt: bool
    output: str | None


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
                       output)


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
         prompt_length: int | None = None) -> np.ndarray:
    """Pooled [batch, len(modes) * hidden] float32 rows from [batch, seq, hidden] token embeddings."""
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
    if spec.normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), np.float32(1e-12))
    return out.astype(np.float32, copy=False)
