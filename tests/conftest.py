"""Shared fixtures: each test gets its own AXON_HOME, cache and production roots."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from axon.settings import Settings
from tests.support.file_server import FileServer
from tests.support.hub_server import FakeHub
from tests.support.servers import serve_in_thread


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path / "home"),
        "AXON_HOME": str(tmp_path / "home" / ".axon"),
        "AXON_CACHE_DIR": str(tmp_path / "cache"),
        "AXON_PUBLISH_DIR": str(tmp_path / "production"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "MLOS_CORE_ENDPOINT", "AXON_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def st_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny sentence-transformers models (tests/support/st_models.py), built once per run."""
    from tests.support.st_models import build_all

    return build_all(tmp_path_factory.getbasetemp() / "st-models")


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny classifiers and cross-encoders (tests/support/classifier_models.py), built once per run."""
    from tests.support.classifier_models import build_all

    return build_all(tmp_path_factory.getbasetemp() / "classifiers")


@pytest.fixture
def settings(isolated_env: dict[str, str]) -> Settings:
    return Settings.from_env(dict(os.environ))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeHub, str]]:
    fake = FakeHub()
    with serve_in_thread(fake.app()) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        yield fake, url


@pytest.fixture
def file_server() -> Iterator[tuple[FileServer, str]]:
    fs = FileServer()
    with serve_in_thread(fs.app()) as url:
        yield fs, url


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def axon_cli() -> object:
    """Run the real ``axon`` entry point in a subprocess with the test's environment."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        proc = subprocess.run([sys.executable, "-m", "axon", *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout, check=False)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One real S3 server (moto in server mode) for the run; each test takes a fresh bucket."""
    from tests.support.s3_server import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def s3_publish_dir(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's ``s3://…/prod/models``, with the test's AWS credentials, endpoint and
    AXON_PUBLISH_DIR pointing at it."""
    from tests.support.s3_server import CREDENTIALS, new_bucket

    url = f"s3://{new_bucket(s3_endpoint)}/prod/models"
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint, "AXON_PUBLISH_DIR": url}.items():
        monkeypatch.setenv(key, value)
    return url


@pytest.fixture
def s3_settings(s3_publish_dir: str) -> Settings:
    """The test's settings with publish_dir on a fresh bucket (not set up yet)."""
    settings = Settings.from_env(dict(os.environ))
    assert settings.publish_store is not None and str(settings.publish_store) == s3_publish_dir
    return settings
