"""Counters and histograms behind ``/metrics`` (Prometheus text format 0.0.4)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (model, outcome)
        self.failures: dict[tuple[str, str], int] = defaultdict(int)  # (model, reason)
        self.hist: dict[tuple[str, str], _Histogram] = {}
        self.gauges: dict[str, Callable[[], dict[str, float]]] = {}

    def _h(self, name: str, model: str, buckets: tuple[float, ...]) -> _Histogram:
        key = (name, model)
        h = self.hist.get(key)
        if h is None:
            h = self.hist[key] = _Histogram(buckets)
        return h

    def request(self, model: str, outcome: str, reason: str | None = None, latency_s: float | None = None) -> None:
        self.requests[(model, outcome)] += 1
        if reason:
            self.failures[(model, reason)] += 1
        if latency_s is not None:
            self._h("mlos_request_duration_seconds", model, LATENCY_BUCKETS).observe(latency_s)

    def batch(self, model: str, size: int, compute_s: float) -> None:
        self._h("mlos_batch_size", model, BATCH_BUCKETS).observe(size)
        self._h("mlos_compute_duration_seconds", model, LATENCY_BUCKETS).observe(compute_s)

    def queue_time(self, model: str, seconds: float) -> None:
        self._h("mlos_queue_duration_seconds", model, LATENCY_BUCKETS).observe(seconds)

    def render(self) -> str:
        out: list[str] = []
        out += ["# HELP mlos_requests_total Inference requests by model and outcome.",
                "# TYPE mlos_requests_total counter"]
        out += [f'mlos_requests_total{{model="{m}",outcome="{o}"}} {v}' for (m, o), v in sorted(self.requests.items())]
        out += ["# HELP mlos_request_failures_total Failed requests by model and reason.",
                "# TYPE mlos_request_failures_total counter"]
        out += [f'mlos_request_failures_total{{model="{m}",reason="{r}"}} {v}'
                for (m, r), v in sorted(self.failures.items())]
        helps = {"mlos_request_duration_seconds": "End-to-end latency of inference requests.",
                 "mlos_queue_duration_seconds": "Time requests waited for a batch.",
                 "mlos_compute_duration_seconds": "onnxruntime time per batch.",
                 "mlos_batch_size": "Rows per executed batch."}
        for name in helps:
            series = sorted((m, h) for (n, m), h in self.hist.items() if n == name)
            out += [f"# HELP {name} {helps[name]}", f"# TYPE {name} histogram"]
            for model, h in series:
                acc = 0
                for bound, count in zip(h.buckets, h.counts, strict=False):
                    acc += count
                    out.append(f'{name}_bucket{{model="{model}",le="{bound:g}"}} {acc}')
                out.append(f'{name}_bucket{{model="{model}",le="+Inf"}} {h.n}')
                out.append(f'{name}_sum{{model="{model}"}} {h.total:.6f}')
                out.append(f'{name}_count{{model="{model}"}} {h.n}')
        for name, fn in self.gauges.items():
            out += [f"# TYPE {name} gauge"]
            values = fn()
            out += [f"{name}{label} {v:g}" for label, v in sorted(values.items())]
        return "\n".join(out) + "\n"
