"""Memory the validation took: resident set before and at peak, GPU memory, the manifest's requirement."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from axon.store.manifest import Manifest

__all__ = ["gpu_memory_of_this_process", "measure_resources", "peak_resident_bytes", "resident_bytes"]

# The model's memory may exceed its stated requirement this many times over (session arenas,
# tokenizer, the inputs of a throughput batch) before the report calls it out of bounds.
REQUIREMENT_SLACK = 4


def _proc_status(field_name: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resident_bytes() -> int:
    """This process's resident set now (0 where /proc cannot tell)."""
    return _proc_status("VmRSS")


def peak_resident_bytes() -> int:
    """The highest resident set this process has had (0 where /proc cannot tell)."""
    return _proc_status("VmHWM")


def gpu_memory_of_this_process() -> int | None:
    """GPU memory this process holds, from nvidia-smi (None when it cannot be asked)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            return int(parts[1]) * 2**20
    return None


def measure_resources(manifest: Manifest, provider: str, rss_before: int) -> dict[str, Any]:
    """The report's ``resources`` section: the peak resident set against *rss_before* (taken
    before the model loaded) and ``requirements.memory_bytes``; GPU memory on CUDA."""
    peak = peak_resident_bytes()
    req = (manifest.requirements or {}).get("memory_bytes")
    return {
        "model_bytes": manifest.total_size, "rss_before_bytes": rss_before, "peak_rss_bytes": peak,
        "requirements_memory_bytes": req,
        "within_requirements": None if not req else bool(peak - rss_before <= REQUIREMENT_SLACK * int(req)),
        "gpu_memory_bytes": gpu_memory_of_this_process() if provider == "CUDAExecutionProvider" else None,
    }
