"""The metrics of several processes as one (``/metrics`` across --workers) and an engine's sink:
any JSON another process's file may hold is either a snapshot that renders as valid Prometheus
text or is left out, and a failing sink never fails the request it counts."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from mlos_core.telemetry import Metrics
from mlos_core.worker_metrics import valid_snapshot

MODEL = "acme/ranker@1.0"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30)


scalars = st.integers(-2, 10**15) | st.floats(allow_nan=True) | st.text(max_size=8) | st.none()
labels = st.text(max_size=16) | st.sampled_from([MODEL, "ok", "{model=\"a\"}", ""])
near_snapshots = st.fixed_dictionaries({}, optional={
    "requests": st.lists(st.lists(labels | scalars, min_size=2, max_size=4), max_size=3),
    "hist": st.lists(st.tuples(st.sampled_from(["mlos_batch_size", "mlos_queue_duration_seconds", "x"]), labels,
                               st.just([1, 2, 4, 8, 16, 32, 64, 128, 256]) | st.lists(scalars, max_size=3),
                               st.lists(st.integers(0, 9), min_size=10, max_size=10) | st.lists(scalars, max_size=3),
                               scalars, scalars).map(list), max_size=2),
    "gauges": st.dictionaries(st.sampled_from(["mlos_models_loaded", "mlos_queue_depth", "x"]),
                              st.dictionaries(labels, scalars, max_size=2), max_size=2),
})


def worker() -> Metrics:
    m = Metrics()
    m.request(MODEL, "ok", latency_s=0.003)
    m.request(MODEL, "failed", "bad_input")
    m.batch(MODEL, 3, 0.001)
    m.queue_time(MODEL, 0.0005)
    m.gauges["mlos_models_loaded"] = lambda: {"": 1}
    return m


def sampled(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["requests", "failures", "hist", "gauges", "other"]), json_values, max_size=4)
       | near_snapshots)
def test_any_file_content_renders_valid_text_or_is_left_out(snap: dict[str, Any]) -> None:
    snap = json.loads(json.dumps(snap))  # what a file read back would hold
    if valid_snapshot(snap):
        sampled(worker().render([snap], live=[snap]))  # Prometheus' parser reads every line


def test_a_snapshot_adds_to_this_process_and_forged_labels_stay_labels() -> None:
    here, there = worker(), worker()
    there.request('x"} 1\nmlos_forged 1', "ok")
    snap = json.loads(json.dumps(there.snapshot()))
    assert valid_snapshot(snap)
    got = sampled(here.render([snap], live=[snap]))
    assert got[("mlos_requests_total", frozenset({("model", MODEL), ("outcome", "ok")}))] == 2
    assert got[("mlos_request_duration_seconds_count", frozenset({("model", MODEL)}))] == 2
    assert got[("mlos_batch_size_bucket", frozenset({("model", MODEL), ("le", "4")}))] == 2
    assert got[("mlos_models_loaded", frozenset())] == 1  # the most, not the sum
    assert not any(name == "mlos_forged" for name, _ in got)
    dead = sampled(here.render([snap], live=[]))  # a worker that is gone: its counts, not its gauges
    assert dead[("mlos_requests_total", frozenset({("model", MODEL), ("outcome", "ok")}))] == 2


@pytest.mark.parametrize("snap", [
    {"requests": [[MODEL, "ok", "5"]]},
    {"requests": [[MODEL, "ok", -1]]},
    {"requests": [[MODEL, "ok"]]},
    {"hist": [["mlos_batch_size", MODEL, [1, 2], [1, 2], 1.0, 3]]},  # one count short
    {"hist": [["mlos_unknown", MODEL, [1], [0, 1], 1.0, 1]]},
    {"gauges": {"mlos_models_loaded": {"": float("inf")}}},
    {"gauges": []},
])
def test_what_is_not_a_snapshot_is_refused(snap: dict[str, Any]) -> None:
    assert not valid_snapshot(snap)


class BrokenEngine:
    def request(self, *args: Any) -> None:
        raise RuntimeError("engine shutting down")

    batch = queue_time = request


def test_a_failing_sink_never_fails_what_it_counts(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(BrokenEngine())
    with caplog.at_level(logging.WARNING, "mlos_core.telemetry"):
        for _ in range(3):
            m.request(MODEL, "ok", latency_s=0.01)
            m.batch(MODEL, 2, 0.001)
            m.queue_time(MODEL, 0.001)
    assert sampled(m.render())[("mlos_requests_total", frozenset({("model", MODEL), ("outcome", "ok")}))] == 3
    assert len([r for r in caplog.records if "engine shutting down" in r.getMessage()]) == 3  # once per kind
