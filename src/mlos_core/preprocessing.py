"""Text in, tensors out, and postprocessing: axon.inference's code, with API errors."""

from __future__ import annotations

import numpy as np

from axon.errors import UsageError
from axon.inference import TextEncoder, postprocess
from mlos_core.errors import ApiError

__all__ = ["TextPipeline", "postprocess"]


class TextPipeline(TextEncoder):
    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        try:
            return super().encode(texts)
        except UsageError as exc:
            raise ApiError(400, "not_a_text_model", str(exc)) from None
