"""``axon.core_integration``: a real MLOS Core against local inference on the cached copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from axon.core_client import CoreClient, CoreUnavailableError
from axon.core_integration import check_core_integration
from axon.example_model import build_example_package
from axon.install import install
from axon.publish import publish
from axon.settings import Settings
from axon.store.spec import parse_spec
from tests.support.core_server import core_server
from tests.support.onnx_models import write_mlp
from tests.support.production import publishable

ENC, MLP = parse_spec("demo/enc@1"), parse_spec("demo/mlp@1")


def _checks(report: object) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in report.checks}  # type: ignore[attr-defined]


def test_an_unreachable_server_raises(settings: Settings) -> None:
    with pytest.raises(CoreUnavailableError, match=re.escape("not reachable at http://127.0.0.1:9")):
        check_core_integration(ENC, settings.with_(core_endpoint="http://127.0.0.1:9"))


def test_against_a_real_server(settings: Settings, tmp_path: Path) -> None:
    settings = publishable(settings)
    install(ENC, settings, from_=str(build_example_package(tmp_path / "enc")))
    install(MLP, settings, from_=str(write_mlp(tmp_path / "mlp-0" / "model.onnx", seed=0).parent))
    publish(ENC, settings)
    publish(MLP, settings)
    with core_server(settings.publish_dir, tmp_path) as core:
        settings = settings.with_(core_endpoint=core.url)

        report = check_core_integration(ENC, settings)
        assert not report.passed and report.endpoint == core.url
        checks = _checks(report)
        assert list(checks) == ["health", "registered"]  # nothing to compare with until it is served
        assert checks["health"][0] and core.url in checks["health"][1]
        assert checks["registered"] == (False, f"state not registered (run: axon register {ENC})")

        client = CoreClient(settings)
        client.register(ENC)
        client.register(MLP)
        for spec in (ENC, MLP):  # text in, and synthesised tensors in
            report = check_core_integration(spec, settings, text="the same answer, please")
            assert report.passed, report.checks
            assert list(_checks(report)) == ["health", "registered", "same answer", "same content"]

        # The cache now holds other content than the server serves: both comparisons fail.
        install(MLP, settings, from_=str(write_mlp(tmp_path / "mlp-1" / "model.onnx", seed=1).parent), force=True)
        report = check_core_integration(MLP, settings)
        checks = _checks(report)
        assert not report.passed and checks["health"][0] and checks["registered"][0]
        assert checks["same answer"][0] is False and "over ['y']" in checks["same answer"][1]
        assert checks["same content"][0] is False
        assert check_core_integration(ENC, settings).passed  # the other model is untouched
