"""Counters and histograms behind ``/metrics`` (Prometheus text format 0.0.4)."""

from __future__ import annotations

import bisect
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["BATCH_BUCKETS", "HISTOGRAMS", "HISTOGRAM_BUCKETS", "LATENCY_BUCKETS", "Metrics", "MetricsSink"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HISTOGRAMS = {"mlos_request_duration_seconds": "End-to-end latency of inference requests.",
              "mlos_queue_duration_seconds": "Time requests waited for a batch.",
              "mlos_compute_duration_seconds": "onnxruntime time per batch.",
              "mlos_batch_size": "Rows per executed batch."}
HISTOGRAM_BUCKETS = {name: BATCH_BUCKETS if name == "mlos_batch_size" else LATENCY_BUCKETS for name in HISTOGRAMS}
# the same models in every worker: not a sum
MAX_GAUGES = frozenset({"mlos_models_loaded", "mlos_model_int8", "mlos_model_int8_cosine"})
log = logging.getLogger("mlos_core.telemetry")
_GAUGE_LABELS = re.compile(r'(\{model="[^"\\\n]*"\})?')  # what our gauges' label sets look like


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


class MetricsSink(Protocol):
    """Somewhere else every observation also goes (an engine's own metrics: Ray Serve's)."""

    def request(self, model: str, outcome: str, reason: str | None, latency_s: float | None) -> None: ...

    def batch(self, model: str, size: int, compute_s: float) -> None: ...

    def queue_time(self, model: str, seconds: float) -> None: ...


class Metrics:
    def __init__(self, sink: MetricsSink | None = None) -> None:
        self.sink = sink
        self._sink_failed: set[str] = set()
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
        if self.sink is not None:
            self._to_sink("request", model, outcome, reason, latency_s)

    def batch(self, model: str, size: int, compute_s: float) -> None:
        self._h("mlos_batch_size", model, BATCH_BUCKETS).observe(size)
        self._h("mlos_compute_duration_seconds", model, LATENCY_BUCKETS).observe(compute_s)
        if self.sink is not None:
            self._to_sink("batch", model, size, compute_s)

    def queue_time(self, model: str, seconds: float) -> None:
        self._h("mlos_queue_duration_seconds", model, LATENCY_BUCKETS).observe(seconds)
        if self.sink is not None:
            self._to_sink("queue_time", model, seconds)

    def _to_sink(self, what: str, *args: Any) -> None:
        """The sink's failure (an engine shutting down, its own checks) never fails the request
        or the batcher that counted it: it is logged, once per kind."""
        try:
            getattr(self.sink, what)(*args)
        except Exception as exc:
            if what not in self._sink_failed:
                self._sink_failed.add(what)
                log.warning("metrics sink %s failed (logged once): %s: %s", what, type(exc).__name__, exc)

    def snapshot(self) -> dict[str, Any]:
        """Everything counted so far, as plain JSON-able data (what another worker merges in)."""
        return {
            "requests": [[m, o, v] for (m, o), v in self.requests.items()],
            "failures": [[m, r, v] for (m, r), v in self.failures.items()],
            "hist": [[name, model, list(h.buckets), h.counts, h.total, h.n] for (name, model), h in self.hist.items()],
            "gauges": {name: fn() for name, fn in self.gauges.items()},
        }

    def render(self, others: Iterable[dict[str, Any]] = (), *, live: Iterable[dict[str, Any]] = ()) -> str:
        """Prometheus text of this process's metrics plus *others*' snapshots (every worker of one
        server, the Prometheus multiprocess way): counters and histograms summed, dead workers'
        included so totals never go back; gauges from this process and the *live* snapshots only,
        summed (``mlos_models_loaded``: the most any worker has)."""
        others, live = list(others), list(live)
        requests: dict[tuple[str, str], int] = defaultdict(int, self.requests)
        failures: dict[tuple[str, str], int] = defaultdict(int, self.failures)
        hist = {key: (list(h.counts), h.total, h.n, h.buckets) for key, h in self.hist.items()}
        for snap in others:
            for m, o, v in snap.get("requests", ()):
                requests[(m, o)] += v
            for m, r, v in snap.get("failures", ()):
                failures[(m, r)] += v
            for name, model, buckets, counts, total, n in snap.get("hist", ()):
                if name not in HISTOGRAMS or list(buckets) != list(HISTOGRAM_BUCKETS[name]):
                    continue  # not a histogram of ours (another version's buckets)
                mine = hist.get((name, model))
                if mine is None:
                    hist[(name, model)] = (list(counts), total, n, tuple(buckets))
                else:
                    hist[(name, model)] = ([a + b for a, b in zip(mine[0], counts, strict=True)], mine[1] + total,
                                           mine[2] + n, mine[3])
        gauges: dict[str, dict[str, float]] = {name: dict(fn()) for name, fn in self.gauges.items()}
        for snap in live:
            for name, values in snap.get("gauges", {}).items():
                into = gauges.get(name)
                if into is None:  # not one of ours
                    continue
                for label, v in values.items():
                    if not _GAUGE_LABELS.fullmatch(label):
                        continue
                    into[label] = max(into.get(label, 0), v) if name in MAX_GAUGES else into.get(label, 0) + v
        out: list[str] = []
        out += ["# HELP mlos_requests_total Inference requests by model and outcome.",
                "# TYPE mlos_requests_total counter"]
        out += [f'mlos_requests_total{{model="{_esc(m)}",outcome="{_esc(o)}"}} {v}'
                for (m, o), v in sorted(requests.items())]
        out += ["# HELP mlos_request_failures_total Failed requests by model and reason.",
                "# TYPE mlos_request_failures_total counter"]
        out += [f'mlos_request_failures_total{{model="{_esc(m)}",reason="{_esc(r)}"}} {v}'
                for (m, r), v in sorted(failures.items())]
        for name, help_text in HISTOGRAMS.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for (_, raw_model), (counts, total, n, buckets) in sorted((k, v) for k, v in hist.items() if k[0] == name):
                model = _esc(raw_model)
                acc = 0
                for bound, count in zip(buckets, counts, strict=False):
                    acc += count
                    out.append(f'{name}_bucket{{model="{model}",le="{bound:g}"}} {acc}')
                out.append(f'{name}_bucket{{model="{model}",le="+Inf"}} {n}')
                out.append(f'{name}_sum{{model="{model}"}} {total:.6f}')
                out.append(f'{name}_count{{model="{model}"}} {n}')
        for name, values in gauges.items():
            out += [f"# TYPE {name} gauge"]
            out += [f"{name}{label} {v:g}" for label, v in sorted(values.items())]
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
