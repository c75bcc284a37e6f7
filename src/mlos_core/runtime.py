"""onnxruntime sessions: provider choice (CUDA when asked or available, never a silent fallback),
session options, warm-up.

A session is only ever made from bytes in memory, never from a path: the verified graph plus the
verified external data files, handed over with ``add_external_initializers_from_files_in_memory``
(``axon.model.inference.build_image``), so onnxruntime resolves no location against the working
directory and reads nothing that was not hashed. A model onnxruntime refuses is a 400, not a 500.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from axon.errors import AxonError
from axon.model.inference import (
    ModelImage,
    VerifiedModel,
    build_image,
    create_ort_session,
    ort_failure,
    synthesize_inputs,
)
from axon.model.onnx_signature import parse_model
from axon.store.manifest import Manifest
from mlos_core.errors import ApiError
from mlos_core.repository import model_refusal

__all__ = ["SessionInfo", "create_session", "warm_up"]

log = logging.getLogger("mlos_core.runtime")
_cuda_failed: str | None = None  # why CUDA did not initialise in this process (auto mode stops trying)


@dataclass
class SessionInfo:
    session: Any
    provider: str
    note: str = ""


def _ort() -> Any:
    import onnxruntime as ort

    return ort


def _image(model: VerifiedModel | ModelImage | bytes) -> ModelImage:
    """What onnxruntime gets, every external reference checked once more right before."""
    try:
        if isinstance(model, ModelImage):
            return model
        if isinstance(model, VerifiedModel):
            return build_image(model)
        if isinstance(model, bytes):  # a bare graph (tests): it may name no external data at all
            return build_image(VerifiedModel("model.onnx", parse_model(model), model))
    except AxonError as exc:
        raise model_refusal(exc, "model") from None
    raise TypeError(f"create_session takes a verified model or bytes, not {type(model).__name__}")


def _refused(exc: BaseException) -> ApiError:
    return ApiError(400, "invalid_model", f"onnxruntime cannot load the model: {ort_failure(exc)}")


def create_session(model: VerifiedModel | ModelImage | bytes, device: str, *, intra_op_threads: int = 0,
                   intra_op_spinning: bool = True) -> SessionInfo:
    """Create the session on *device* (auto|cpu|cuda); 'cuda' fails loudly if CUDA cannot run it.

    Raises:
        ApiError: 400 when onnxruntime refuses the model (first line of its message), 403/409/400
            when a reference cannot be served from the verified files, 500 when CUDA was asked
            for and cannot run a model the CPU can.
    """
    global _cuda_failed
    ort = _ort()
    image = _image(model)

    def session(providers: list[str]) -> Any:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        opts.log_severity_level = 3
        # Spinning (onnxruntime's default) lets intra-op threads pick up the next operator without a
        # futex wake-up; on the 2-core VM it was worth +32% at batch 1 and -30% tiny-model latency even
        # with the event loop sharing the cores. Off: idle cores are left to other processes sooner.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra_op_spinning else "0")
        return create_ort_session(image, opts, providers)

    def on_cpu() -> Any:
        try:
            return session(["CPUExecutionProvider"])
        except MemoryError:
            raise
        except Exception as exc:
            raise _refused(exc) from None

    if device == "auto" and _cuda_failed is None and not os.path.exists("/proc/driver/nvidia/version"):
        _cuda_failed = "no NVIDIA driver on this machine"
    want_cuda = device == "cuda" or (
        device == "auto" and _cuda_failed is None and "CUDAExecutionProvider" in ort.get_available_providers())
    if want_cuda:
        try:
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            sess = session(["CUDAExecutionProvider", "CPUExecutionProvider"])
        except Exception as exc:
            sess, reason = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            cpu = on_cpu()  # a model the CPU cannot load either is the model's fault (400), not CUDA's
        else:
            reason = "" if sess.get_providers()[0] == "CUDAExecutionProvider" else "CUDA provider did not initialise"
            cpu = None
        if not reason:
            return SessionInfo(sess, "CUDAExecutionProvider")
        if device == "cuda":
            raise ApiError(500, "cuda_unavailable", f"device 'cuda' requested but CUDA cannot run the model ({reason})")
        _cuda_failed = reason
        log.warning("CUDA unavailable (%s): using CPUExecutionProvider", reason)
        sess = cpu if cpu is not None else on_cpu()
    else:
        sess = on_cpu()
    note = f"CUDA unavailable: {_cuda_failed}" if device == "auto" and _cuda_failed else ""
    return SessionInfo(sess, sess.get_providers()[0], note)


def warm_up(info: SessionInfo, manifest: Manifest) -> None:
    """One run on synthesized inputs; a model that cannot run them is refused (400), not a 500."""
    try:
        info.session.run(None, synthesize_inputs(manifest.inputs))
    except AxonError as exc:
        raise ApiError(400, "invalid_model", f"cannot warm the model up: {exc.message}") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise ApiError(400, "invalid_model", f"the model failed its warm-up run: {ort_failure(exc)}") from None
