"""``axon.release``: validate (when asked) -> publish -> notify MLOS Core; validate's auto-publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from axon.core_client import CoreClient
from axon.errors import AxonError
from axon.example_model import build_example_package
from axon.install import install
from axon.publish import AlreadyPublishedError
from axon.release import release, validate_with_auto_publish
from axon.settings import Settings, set_config_value
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from axon.validation import load_report, passing_report
from tests.support.core_server import core_server
from tests.support.production import publishable
from tests.support.reporting import RecordingReporter

ENC = parse_spec("demo/enc@1")
VALIDATING = "validating now"


@pytest.fixture
def prod_settings(settings: Settings, tmp_path: Path) -> Settings:
    settings = publishable(settings)
    install(ENC, settings, from_=str(build_example_package(tmp_path / "enc")))
    return settings


def _published_dir(settings: Settings) -> Path:
    return StoreLayout(settings.publish_dir).version_dir(ENC)


def _reinstall_changed(settings: Settings, tmp_path: Path) -> str:
    """The same spec with other content (a changed config.json): a new digest."""
    pkg = build_example_package(tmp_path / "enc-2")
    (pkg / "config.json").write_text((pkg / "config.json").read_text().rstrip() + "\n\n")
    return install(ENC, settings, from_=str(pkg), force=True).manifest.digest


def _corrupt_cache(settings: Settings) -> None:
    model = StoreLayout(settings.cache_dir).version_dir(ENC) / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.chmod(0o644)
    model.write_bytes(bytes(data))


def test_release_publishes_then_is_unchanged(prod_settings: Settings) -> None:
    reporter = RecordingReporter()
    r = release(ENC, prod_settings, reporter=reporter)
    assert r.published.status == "published" and r.published.path == _published_dir(prod_settings)
    assert r.notified is None and reporter.warnings == []
    assert (_published_dir(prod_settings) / "model.onnx").is_file()
    assert not any(VALIDATING in s for s in reporter.stages)
    again = release(ENC, prod_settings)
    assert again.published.status == "unchanged" and again.published.digest == r.published.digest


def test_a_dry_run_copies_nothing_and_notifies_no_one(prod_settings: Settings) -> None:
    reporter = RecordingReporter()
    r = release(ENC, prod_settings, dry_run=True, notify=True, reporter=reporter)
    assert r.published.status == "dry-run" and r.published.files > 0 and r.notified is None
    assert not _published_dir(prod_settings).exists() and reporter.warnings == []


def test_other_content_needs_force(prod_settings: Settings, tmp_path: Path) -> None:
    first = release(ENC, prod_settings).published.digest
    second = _reinstall_changed(prod_settings, tmp_path)
    with pytest.raises(AlreadyPublishedError):
        release(ENC, prod_settings)
    r = release(ENC, prod_settings, force=True)
    assert (r.published.status, r.published.digest_old, r.published.digest) == ("replaced", first, second)


def test_require_validation_validates_when_no_report_passed_for_this_digest(prod_settings: Settings) -> None:
    cache_dir = StoreLayout(prod_settings.cache_dir).version_dir(ENC)
    reporter = RecordingReporter()
    r = release(ENC, prod_settings, require_validation=True, reporter=reporter)
    assert r.published.status == "published"
    digest = r.published.digest
    assert [s for s in reporter.stages if VALIDATING in s] == [
        f"no passing validation for digest {digest[:12]}: validating now"]
    assert "functional checks" in reporter.stages  # validate's own stages go to the same reporter
    assert passing_report(cache_dir, digest) is not None

    # A passing report for this digest: no second validation.
    stored = (cache_dir / ".axon" / "validation.json").read_bytes()
    reporter = RecordingReporter()
    assert release(ENC, prod_settings, require_validation=True, reporter=reporter).published.status == "unchanged"
    assert not any(VALIDATING in s for s in reporter.stages)
    assert (cache_dir / ".axon" / "validation.json").read_bytes() == stored

    # A passing report, but for other content than is installed now: validated again.
    (cache_dir / ".axon" / "validation.json").write_text(json.dumps({**json.loads(stored), "digest": "0" * 32}))
    reporter = RecordingReporter()
    assert release(ENC, prod_settings, require_validation=True, reporter=reporter).published.status == "unchanged"
    assert any(VALIDATING in s for s in reporter.stages)
    assert passing_report(cache_dir, digest) is not None


def test_a_failed_validation_publishes_nothing(prod_settings: Settings) -> None:
    _corrupt_cache(prod_settings)
    with pytest.raises(AxonError, match="failed; not publishing") as info:
        release(ENC, prod_settings, require_validation=True)
    assert info.value.hint == f"See the report: axon validate {ENC}"
    assert not _published_dir(prod_settings).exists()
    report = load_report(StoreLayout(prod_settings.cache_dir).version_dir(ENC))
    assert report is not None and report["passed"] is False


def test_a_failed_notify_is_a_warning(prod_settings: Settings) -> None:
    reporter = RecordingReporter()
    r = release(ENC, prod_settings.with_(core_endpoint="http://127.0.0.1:9"), notify=True, reporter=reporter)
    assert r.published.status == "published" and r.notified is False
    assert len(reporter.warnings) == 1
    assert reporter.warnings[0].startswith("could not notify MLOS Core: MLOS Core is not reachable")
    assert reporter.warnings[0].endswith(f"Register later with: axon register {ENC}")


def test_notify_registers_with_a_real_server(prod_settings: Settings, tmp_path: Path) -> None:
    with core_server(prod_settings.publish_dir, tmp_path) as core:
        settings = prod_settings.with_(core_endpoint=core.url)
        r = release(ENC, settings, notify=True)
        assert r.published.status == "published" and r.notified is True
        served = {m["model_id"]: m for m in CoreClient(settings).models()["models"]}
        assert served[str(ENC)]["state"] == "ready" and served[str(ENC)]["digest"] == r.published.digest
        assert release(ENC, settings, notify=True).notified is True  # unchanged content: told again


def test_validate_with_auto_publish_off(prod_settings: Settings) -> None:
    result = validate_with_auto_publish(ENC, prod_settings, seconds=0.05)
    assert result.report["passed"] and result.auto_published is None and "auto_published" not in result.report
    assert not _published_dir(prod_settings).exists()


def test_validate_with_auto_publish_on(prod_settings: Settings) -> None:
    set_config_value(prod_settings.config_file, "auto_publish_on_validation", "true")
    settings = publishable(prod_settings)
    assert settings.auto_publish_on_validation
    reporter = RecordingReporter()
    result = validate_with_auto_publish(ENC, settings, seconds=0.05, reporter=reporter)
    assert result.auto_published == "published" and result.report["auto_published"] == "published"
    assert (_published_dir(settings) / "manifest.yaml").is_file()
    stored = json.loads((StoreLayout(settings.cache_dir).version_dir(ENC) / ".axon" / "validation.json").read_text())
    assert "auto_published" not in stored and stored["digest"] == result.report["digest"]
    assert "functional checks" in reporter.stages

    _corrupt_cache(settings)  # a failing validation publishes nothing (and raises nothing)
    failed = validate_with_auto_publish(ENC, settings, seconds=0.05)
    assert failed.report["passed"] is False and failed.auto_published is None
