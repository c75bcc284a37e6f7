from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from axon import cache
from axon.errors import IntegrityError, InvalidModelError, SourceError, UsageError
from axon.install import install
from axon.settings import Settings
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.file_server import FileServer
from tests.support.onnx_models import mlp_model


def _big_model_bytes(features: int = 512, out: int = 1024) -> bytes:
    return mlp_model(features=features, out=out).SerializeToString()  # ~2 MiB


def test_url_install_with_sha256(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    data = _big_model_bytes()
    fs.files["ranker.onnx"] = data
    r = install(parse_spec("acme/ranker@1"), settings, from_=f"{url}/files/ranker.onnx",
                sha256=hashlib.sha256(data).hexdigest())
    assert (r.path / "ranker.onnx").read_bytes() == data
    assert r.manifest.source["type"] == "url" and r.manifest.source["etag"]
    assert r.manifest.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert list(StoreLayout(settings.cache_dir).downloads.glob("*.part")) == []


def test_sha256_mismatch_installs_nothing(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = _big_model_bytes()
    with pytest.raises(IntegrityError) as info:
        install(parse_spec("acme/m@1"), settings, from_=f"{url}/files/m.onnx", sha256="0" * 64)
    assert info.value.exit_code == 3
    assert not StoreLayout(settings.cache_dir).version_dir(parse_spec("acme/m@1")).exists()
    assert list(StoreLayout(settings.cache_dir).downloads.glob("*.part")) == []


def test_dropped_connection_resumes_with_range(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    data = _big_model_bytes()
    fs.files["m.onnx"] = data
    fs.drop_after["m.onnx"] = 512 * 1024
    r = install(parse_spec("acme/m@1"), settings, from_=f"{url}/files/m.onnx")
    assert (r.path / "m.onnx").read_bytes() == data
    ranges = [rng for name, rng in fs.requests if name == "m.onnx" and rng != "bytes=0-0"]  # not the ranges probe
    assert ranges[0] is None and ranges[1] is not None and int(ranges[1][6:-1]) >= 512 * 1024
    assert cache.verify(settings.cache_dir, r.spec).ok


def test_server_ignoring_range_restarts_cleanly(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    data = _big_model_bytes()
    fs.files["m.onnx"] = data
    fs.drop_after["m.onnx"] = 256 * 1024
    fs.ignore_range = True
    r = install(parse_spec("acme/m@1"), settings, from_=f"{url}/files/m.onnx",
                sha256=hashlib.sha256(data).hexdigest())
    assert (r.path / "m.onnx").read_bytes() == data


def test_transient_errors_are_retried(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = _big_model_bytes(8, 8)
    fs.fail_status["m.onnx"] = [503, 502]
    r = install(parse_spec("acme/m@1"), settings, from_=f"{url}/files/m.onnx")
    assert r.status == "installed"
    assert len([1 for name, _ in fs.requests if name == "m.onnx"]) == 3


@pytest.mark.parametrize(("status", "fragment"), [(404, "HTTP 404 (not found)"), (403, "HTTP 403 (access denied)")])
def test_http_errors_are_one_line(settings: Settings, file_server: tuple[FileServer, str], status: int,
                                  fragment: str) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = b"x"
    fs.fail_status["m.onnx"] = [status]
    with pytest.raises(SourceError) as info:
        install(parse_spec("acme/m@1"), settings, from_=f"{url}/files/m.onnx")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unreachable_server(settings: Settings) -> None:
    with pytest.raises(SourceError, match="failed after"):
        from axon.sources.url import UrlSource

        src = UrlSource("http://127.0.0.1:9/m.onnx", settings.cache_dir / ".axon" / "downloads", retries=1,
                        backoff_s=0.01)
        src.fetch(settings.cache_dir, __import__("axon.reporting", fromlist=["NullReporter"]).NullReporter())


@pytest.mark.parametrize(
    ("url", "error"),
    [("ftp://x/m.onnx", UsageError), ("http://127.0.0.1/archive.tar.gz", InvalidModelError),
     ("http://127.0.0.1/", UsageError)],
)
def test_bad_urls(settings: Settings, url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        install(parse_spec("acme/m@1"), settings, from_=url)


def test_download_downloaded_file_that_is_not_onnx(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = b"<html>login page</html>"
    with pytest.raises(InvalidModelError, match="not a readable ONNX model"):
        install(parse_spec("acme/m@1"), settings, from_=f"{url}/files/m.onnx")
    assert not StoreLayout(settings.cache_dir).version_dir(parse_spec("acme/m@1")).exists()


def test_killed_download_resumes_on_rerun(tmp_path: Path, file_server: tuple[FileServer, str],
                                          isolated_env: dict[str, str]) -> None:
    fs, url = file_server
    data = mlp_model(features=1024, out=2048).SerializeToString()  # ~8 MiB
    fs.files["big.onnx"] = data
    fs.throttle_bps = 4 << 20
    downloads = Path(isolated_env["AXON_CACHE_DIR"]) / ".axon" / "downloads"
    proc = subprocess.Popen([sys.executable, "-m", "axon", "install", "acme/big@1", "--from", f"{url}/files/big.onnx"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = list(downloads.glob("*.part")) if downloads.exists() else []
        if parts and parts[0].stat().st_size > 1 << 20:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("download never started")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    version_dir = Path(isolated_env["AXON_CACHE_DIR"]) / "acme" / "big" / "1"
    assert not version_dir.exists()  # nothing visible after the kill
    have = parts[0].stat().st_size
    fs.throttle_bps = None
    fs.requests.clear()
    out = subprocess.run([sys.executable, "-m", "axon", "install", "acme/big@1", "--from", f"{url}/files/big.onnx",
                          "--sha256", hashlib.sha256(data).hexdigest()], capture_output=True, text=True,
                         env=dict(os.environ), check=False)
    assert out.returncode == 0, out.stderr
    assert (version_dir / "big.onnx").read_bytes() == data
    ((_, rng),) = [r for r in fs.requests if r[1] != "bytes=0-0"]  # one request after the ranges probe
    assert rng is not None and int(rng[6:-1]) >= have - (1 << 20)
    assert "resuming download" in out.stderr
