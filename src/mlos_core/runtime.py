"""onnxruntime sessions: provider choice (CUDA when asked or available, never a silent fallback),
session options, warm-up."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from axon.inference import synthesize_inputs
from axon.manifest import Manifest
from mlos_core.errors import ApiError

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


def create_session(model: bytes | str, device: str, *, intra_op_threads: int = 0,
                   intra_op_spinning: bool = True) -> SessionInfo:
    """Create the session on *device* (auto|cpu|cuda); 'cuda' fails loudly if CUDA cannot run it."""
    global _cuda_failed
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    opts.log_severity_level = 3
    # Spinning (onnxruntime's default) lets intra-op threads pick up the next operator without a
    # futex wake-up; on the 2-core VM it was worth +32% at batch 1 and -30% tiny-model latency even
    # with the event loop sharing the cores. Off: idle cores are left to other processes sooner.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra_op_spinning else "0")
    if device == "auto" and _cuda_failed is None and not os.path.exists("/proc/driver/nvidia/version"):
        _cuda_failed = "no NVIDIA driver on this machine"
    want_cuda = device == "cuda" or (
        device == "auto" and _cuda_failed is None and "CUDAExecutionProvider" in ort.get_available_providers())
    if want_cuda:
        try:
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            sess = ort.InferenceSession(model, sess_options=opts,
                                        providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        except Exception as exc:
            sess, reason = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            reason = "" if sess.get_providers()[0] == "CUDAExecutionProvider" else "CUDA provider did not initialise"
        if not reason:
            return SessionInfo(sess, "CUDAExecutionProvider")
        if device == "cuda":
            raise ApiError(500, "cuda_unavailable", f"device 'cuda' requested but CUDA cannot run the model ({reason})")
        _cuda_failed = reason
        log.warning("CUDA unavailable (%s): using CPUExecutionProvider", reason)
    sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    note = f"CUDA unavailable: {_cuda_failed}" if device == "auto" and _cuda_failed else ""
    return SessionInfo(sess, sess.get_providers()[0], note)


def warm_up(info: SessionInfo, manifest: Manifest) -> None:
    info.session.run(None, synthesize_inputs(manifest.inputs))
