"""``axon run``: a cached model on texts or on a file of inputs, in this process (no server)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from axon.cache import get_installed
from axon.errors import UsageError
from axon.settings import Settings
from axon.store.spec import ModelSpec

__all__ = ["LocalRunResult", "ModelFeeds", "RunInputs", "read_input_file", "run_locally"]


@dataclass(frozen=True, slots=True)
class ModelFeeds:
    """Inputs as read, before the model's dtypes apply: texts, or tensors by input name."""

    texts: list[Any] | None = None
    tensors: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What to run the model on: *texts*, or an *input_file* of texts or named tensors; exactly one."""

    texts: tuple[str, ...] = ()
    input_file: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.texts) == bool(self.input_file):
            raise UsageError("Give either --input TEXT or --input-file FILE.")

    def read(self) -> ModelFeeds:
        """The texts, or what the input file holds (see :func:`read_input_file`)."""
        if self.input_file is None:
            return ModelFeeds(texts=list(self.texts))
        return read_input_file(self.input_file)


@dataclass(frozen=True, slots=True)
class LocalRunResult:
    spec: ModelSpec
    provider: str
    outputs: dict[str, np.ndarray]  # raw graph outputs left out when postprocessing exists, unless asked for
    labels: list[str] | None  # a classifier's labels, from its postprocessing


def read_input_file(path: Path) -> ModelFeeds:
    """``.npz`` (named arrays) or JSON: ``{"input": text | [texts]}`` or ``{"inputs": {name: nested
    list}}`` (a bare ``{name: nested list}`` too).

    Raises:
        UsageError: a ``.npy`` file, unreadable or malformed JSON, or JSON of another shape.
    """
    if path.suffix == ".npz":
        with np.load(path) as data:
            return ModelFeeds(tensors={k: data[k] for k in data.files})
    if path.suffix == ".npy":
        raise UsageError("A .npy file holds one unnamed array; use .npz (np.savez(file, name=array)) or JSON.")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read --input-file {str(path)!r}: {exc}") from None
    if isinstance(doc, dict) and "input" in doc:
        return ModelFeeds(texts=doc["input"] if isinstance(doc["input"], list) else [doc["input"]])
    if isinstance(doc, dict) and "inputs" in doc:
        doc = doc["inputs"]
    if not isinstance(doc, dict):
        raise UsageError("--input-file JSON must be {'input': text} or {'inputs': {name: nested list}}.")
    return ModelFeeds(tensors=doc)


def run_locally(spec: ModelSpec, settings: Settings, inputs: RunInputs, *, device: str | None = None,
                raw: bool = False, prompt: str | None = None, prompt_name: str | None = None) -> LocalRunResult:
    """Load *spec* from the dev cache (verified, in memory) and run it once on *inputs*.

    Tensors take the dtypes the manifest declares for their inputs (float32 for names it does not
    know). With postprocessing, only its outputs are returned unless *raw*. *prompt* or
    *prompt_name* (text input only) go before every text.

    Raises:
        NotInstalledError, IntegrityError, InvalidModelError (the model is refused), UsageError
        (bad input file, text for a tensor model, a prompt for tensors, an unknown prompt name).
    """
    from axon.model.inference import LocalModel

    cached = get_installed(settings.cache_dir, spec)
    manifest = cached.manifest
    model = LocalModel(cached.path, manifest, device=device or settings.device)
    feeds = inputs.read()
    tensors = None
    if feeds.tensors is not None:
        dtypes = {t.name: t.dtype for t in manifest.inputs}
        tensors = {k: np.asarray(v, dtype=dtypes.get(k, "float32")) for k, v in feeds.tensors.items()}
    if (prompt or prompt_name) and feeds.texts is None:
        raise UsageError("--prompt and --prompt-name apply to text input (--input).")
    if feeds.texts is not None:
        outputs = model.run(texts=feeds.texts, prompt=prompt, prompt_name=prompt_name)
    else:
        outputs = model.run(tensors=tensors)
    post = manifest.postprocessing
    if post and post.get("type") not in (None, "none") and not raw:
        graph_outputs = {t.name for t in manifest.outputs}
        outputs = {k: v for k, v in outputs.items() if k not in graph_outputs}
    return LocalRunResult(spec, model.provider, outputs, (post or {}).get("labels"))
