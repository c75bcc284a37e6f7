"""Text in, tensors out, and postprocessing: axon.model.inference's code, with API errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from axon.errors import AxonError, UsageError
from axon.model.inference import TextEncoder, postprocess
from axon.store.manifest import Manifest
from mlos_core.errors import ApiError
from mlos_core.repository import model_refusal

__all__ = ["TextPipeline", "postprocess"]


class TextPipeline(TextEncoder):
    def __init__(self, version_dir: Path, manifest: Manifest, *, sha256: bool = False) -> None:
        try:  # the tokenizer's verified bytes, read beneath the version
            super().__init__(version_dir, manifest, sha256=sha256)
        except AxonError as exc:
            raise model_refusal(exc, manifest.spec_text) from None

    def encode(self, texts: Sequence[str | tuple[str, str]], prompt: str | None = None) -> dict[str, np.ndarray]:
        try:
            return super().encode(texts, prompt)
        except UsageError as exc:
            raise ApiError(400, "not_a_text_model", str(exc)) from None

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        try:
            return super().resolve_prompt(prompt, prompt_name)
        except UsageError as exc:
            raise ApiError(400, "bad_prompt", str(exc)) from None
