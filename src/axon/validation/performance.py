"""Latency at batch 1 and throughput at a larger batch, on the loaded model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from axon.store.manifest import Manifest
from axon.validation.samples import sample_inputs

__all__ = ["measure_performance"]

WARMUP_RUNS = 5
MIN_LATENCY_SAMPLES, MAX_LATENCY_SAMPLES = 20, 2000


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def p(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1e3, 3)

    return {"p50_ms": p(0.50), "p95_ms": p(0.95), "p99_ms": p(0.99), "samples": len(s)}


def measure_performance(version_dir: Path, manifest: Manifest, model: Any, *, batch_size: int,
                        seconds: float) -> dict[str, Any]:
    """Batch-1 latency percentiles over about *seconds* (at least 20, at most 2000 runs, after a
    warm-up), then rows per second at *batch_size* over about *seconds*: the report's
    ``performance`` section."""
    one = sample_inputs(version_dir, manifest, model, 1)
    many = sample_inputs(version_dir, manifest, model, batch_size)
    for _ in range(WARMUP_RUNS):
        model.run(**one)
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < MIN_LATENCY_SAMPLES:
        t0 = time.perf_counter()
        model.run(**one)
        lat.append(time.perf_counter() - t0)
        if len(lat) >= MAX_LATENCY_SAMPLES:
            break
    model.run(**many)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        model.run(**many)
        n += batch_size
    return {"batch1": _percentiles(lat), "batch_size": batch_size,
            "throughput_per_s": round(n / (time.perf_counter() - t0), 2)}
