"""The deployment file: strict parsing (every mistake named, never a traceback), a faithful round
trip, and the edits `axon deploy` makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.store.deployment import (
    API_VERSION,
    Autoscale,
    Deployment,
    InvalidDeploymentError,
    RaySettings,
    dump_deployment,
    load_deployment,
    parse_deployment,
    write_deployment,
)
from axon.store.spec import parse_spec

PIN = "sha256:" + "ab" * 32


def doc(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Deployment", **fields}


def test_a_full_file_round_trips(tmp_path: Path) -> None:
    d = Deployment("s3://models/prod", "/var/cache/mlos/models", (), 1, Autoscale(1, 4, 2.5), 0.5, 1,
                   {"max_batch_size": 64, "precision": "fp32"}, RaySettings(5.0, 20.0, "haproxy", 32))
    d = d.with_model(parse_spec("acme/ranker@2.1.0"), PIN).with_model(parse_spec("acme/embed@1"), "sha256:" + "1" * 64)
    write_deployment(tmp_path / "mlos-deploy.yaml", d)
    assert load_deployment(tmp_path / "mlos-deploy.yaml") == d
    assert [str(m.spec) for m in d.models] == ["acme/embed@1", "acme/ranker@2.1.0"]
    other = "sha256:" + "2" * 64
    again = d.with_model(parse_spec("acme/ranker@2.1.0"), other).without_model(parse_spec("acme/embed@1"))
    assert [(str(m.spec), m.digest) for m in again.models] == [("acme/ranker@2.1.0", other)]


@pytest.mark.parametrize("fields,problem", [
    ({"models": [{"model": "acme/a@1", "digest": "nope"}]}, "models[0].digest must be"),
    ({"models": [{"model": "acme/a@1", "digest": "0" * 32}]}, "must be a manifest digest"),  # the weak form
    ({"server": {"deployment_doc": "x"}}, "server.deployment_doc is set by"),
    ({"models": [{"model": "acme/a", "digest": PIN}]}, "must be NS/NAME@VERSION"),
    ({"models": [{"model": "acme/a@1", "digest": PIN}, {"model": "acme/a@1", "digest": PIN}]}, "listed twice"),
    ({"models": [{"model": "acme/a@1", "digest": PIN, "replicas": 2}]}, "unknown key models[0].'replicas'"),
    ({"replica": 2}, "unknown key 'replica'"),
    ({"replicas": 2, "autoscale": {"max": 3}}, "not both"),
    ({"replicas": 0}, "replicas must be an integer >= 1"),
    ({"replicas": True}, "replicas must be an integer"),
    ({"autoscale": {"min": 3, "max": 2}}, "below autoscale.min"),
    ({"autoscale": {"min": 1, "max": 2, "target_ongoing_requests": 0}}, "target_ongoing_requests must be"),
    ({"gpus": -0.5}, "gpus must be a number >= 0"),
    ({"gpus": float("nan")}, "gpus must be a number"),
    ({"server": {"port": 9000}}, "server.port is set by the deployment"),
    ({"server": {"max_batch_size": [1]}}, "plain values"),
    ({"ray": {"proxy": "nginx"}}, "ray.proxy must be one of"),
    ({"cache_dir": "/var/cache/x"}, "goes with an s3:// repository"),
])
def test_mistakes_are_named(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidDeploymentError) as err:
        parse_deployment(doc(**fields), "'f.yaml'")
    assert problem in err.value.message and "'f.yaml'" in err.value.message, err.value.message


def test_a_file_that_is_missing_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(InvalidDeploymentError, match="No deployment file"):
        load_deployment(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("models: [\n")
    with pytest.raises(InvalidDeploymentError, match=r"not valid YAML \(line"):
        load_deployment(tmp_path / "bad.yaml")
    (tmp_path / "kind.yaml").write_text("apiVersion: v1\nkind: Pod\n")
    with pytest.raises(InvalidDeploymentError, match="apiVersion must be"):
        load_deployment(tmp_path / "kind.yaml")


scalars = st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KEYS = ["repository", "cache_dir", "models", "replicas", "autoscale", "gpus", "max_replicas_per_node", "server", "ray"]
model_items = st.fixed_dictionaries({"model": st.sampled_from(["acme/a@1", "acme/b/c@2", "bad", 3]),
                                     "digest": st.sampled_from([PIN, "0" * 32, "x"])})


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=150)
@given(st.dictionaries(st.sampled_from(KEYS), values | st.lists(model_items, max_size=3), max_size=6))
def test_any_document_parses_or_is_refused_cleanly(fields: dict[str, Any]) -> None:
    try:
        d = parse_deployment(doc(**fields))
    except InvalidDeploymentError as exc:
        assert exc.message.startswith("Invalid deployment file")
        return
    assert parse_deployment(yaml.safe_load(dump_deployment(d))) == d
