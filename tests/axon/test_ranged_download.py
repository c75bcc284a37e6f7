"""Parallel ranged downloads (issue #16, item 1) against a real HTTP file server on 127.0.0.1:
a large file arrives as concurrent ``Range`` parts written where they belong, a dropped part is
fetched again on its own, a run that stops keeps its finished parts for the next, a server that
ignores ``Range`` gets one stream, a redirect is followed once, and wrong bytes install nothing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from axon.errors import IntegrityError, SourceError
from axon.install import install
from axon.reporting import Reporter
from axon.settings import Settings
from axon.sources.hub import HubSource
from axon.sources.ranged import MIN_PART_BYTES, default_part_bytes
from axon.sources.url import UrlSource
from axon.store.spec import parse_spec
from tests.support.file_server import FileServer
from tests.support.hub_server import FakeHub

MiB = 1 << 20
DATA = os.urandom(6 * MiB + 12345)  # 7 parts of 1 MiB, the last one short
PART = 1 * MiB


class Recorder(Reporter):
    """What the user would see: the stages and the one progress bar's total and bytes."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.warnings: list[str] = []
        self.total: int | None = None
        self.totals: list[int | None] = []
        self.advanced = 0

    def stage(self, message: str) -> None:
        self.stages.append(message)

    def start(self, label: str, total: int | None) -> None:
        self.total = total
        self.totals.append(total)

    def advance(self, nbytes: int) -> None:
        self.advanced += nbytes

    def finish(self) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def source(url: str, tmp_path: Path, name: str = "m.onnx", **kwargs: object) -> UrlSource:
    options: dict[str, object] = {"connections": 4, "part_bytes": PART, "ranged_above": MiB, "backoff_s": 0.01,
                                  "sha256": hashlib.sha256(DATA).hexdigest(), **kwargs}
    return UrlSource(f"{url}/files/{name}", tmp_path / "downloads", **options)  # type: ignore[arg-type]


def parts_asked(fs: FileServer, name: str = "m.onnx") -> list[str]:
    return [rng for n, rng in fs.requests if n == name and rng and rng != "bytes=0-0"]


def fetched(src: UrlSource, tmp_path: Path, reporter: Reporter | None = None) -> bytes:
    staging = tmp_path / "staging"
    result = src.fetch(staging, reporter or Recorder())
    data = (staging / "m.onnx").read_bytes()
    assert result.digests["m.onnx"].sha256 == hashlib.sha256(data).hexdigest()
    return data


def test_a_large_file_arrives_in_concurrent_parts(file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    rec = Recorder()
    assert fetched(source(url, tmp_path), tmp_path, rec) == DATA
    expected = [f"bytes={a}-{min(a + PART, len(DATA)) - 1}" for a in range(0, len(DATA), PART)]
    assert sorted(parts_asked(fs)) == sorted(expected)  # every part once, exactly its bytes
    assert rec.total == len(DATA) and rec.advanced == len(DATA)  # one bar for the whole file
    assert any("7 parts over 4 connections" in s for s in rec.stages), rec.stages
    assert not list((tmp_path / "downloads").iterdir())  # nothing left behind


def test_a_dropped_part_is_fetched_again_alone(file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    fs.drop_at["m.onnx"] = 3 * PART
    rec = Recorder()
    assert fetched(source(url, tmp_path), tmp_path, rec) == DATA
    asked = parts_asked(fs)
    assert asked.count(f"bytes={3 * PART}-{4 * PART - 1}") == 2 and len(asked) == 8  # only that part twice
    assert len(rec.warnings) == 1 and "part 4/7" in rec.warnings[0]
    assert rec.advanced == len(DATA)  # the bar gave back the lost part's bytes


def test_a_part_that_does_not_match_its_content_digest_is_fetched_again_alone(
        file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    """The server gives each part's digest (RFC 9530 Content-Digest); a part flipped on its way
    is refused on its own and fetched again, and the file passes its sha256 the first time."""
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    fs.content_digest = True
    fs.corrupt_at["m.onnx"] = 2 * PART
    rec = Recorder()
    assert fetched(source(url, tmp_path), tmp_path, rec) == DATA
    asked = parts_asked(fs)
    assert asked.count(f"bytes={2 * PART}-{3 * PART - 1}") == 2 and len(asked) == 8, asked
    assert len(rec.warnings) == 1 and "part 3/7" in rec.warnings[0] and "Content-Digest" in rec.warnings[0]
    assert rec.advanced == len(DATA)


def test_a_stopped_run_keeps_its_finished_parts(file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    fs.drop_at["m.onnx"] = 4 * PART
    with pytest.raises(SourceError, match="part 5/7 still failing"):
        fetched(source(url, tmp_path, connections=2, retries=0), tmp_path)
    (state,) = (tmp_path / "downloads").glob("*.parts.json")
    done = json.loads(state.read_text())["done"]
    assert {0, 1, 2, 3} <= set(done) and 4 not in done  # two connections in order: all before the drop
    fs.requests.clear()
    assert fetched(source(url, tmp_path), tmp_path) == DATA
    assert sorted(parts_asked(fs)) == sorted(f"bytes={a}-{min(a + PART, len(DATA)) - 1}"
                                             for i, a in enumerate(range(0, len(DATA), PART)) if i not in done)


def test_finished_parts_count_only_for_the_part_file_they_were_written_to(
        file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    """The partial file goes (axon cache gc, a stream run in between) while its record of finished
    parts stays: the next run must fetch everything again, not trust the record (no --sha256 here
    to catch it)."""
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    fs.drop_at["m.onnx"] = 4 * PART
    with pytest.raises(SourceError):
        fetched(source(url, tmp_path, connections=2, retries=0), tmp_path)
    (part,) = (tmp_path / "downloads").glob("*.part")
    part.unlink()  # what gc removes
    fs.requests.clear()
    assert fetched(source(url, tmp_path, sha256=None), tmp_path) == DATA
    assert len(parts_asked(fs)) == 7


def test_a_token_never_follows_a_redirect_to_another_host(file_server: tuple[FileServer, str]) -> None:
    from axon.sources.ranged import probe

    fs, url = file_server
    fs.files["cdn/m.onnx"] = DATA
    fs.redirect["m.onnx"] = url.replace("127.0.0.1", "localhost") + "/files/cdn/m.onnx"
    found = probe(f"{url}/files/m.onnx", {"Authorization": "Bearer hf_secret"})
    assert found.ranges and found.size == len(DATA) and "localhost" in found.url
    assert fs.authorization == [("m.onnx", "Bearer hf_secret"), ("cdn/m.onnx", None)]


def test_a_server_that_ignores_range_gets_one_stream(file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    fs.ignore_range = True
    assert fetched(source(url, tmp_path), tmp_path) == DATA
    assert [rng for n, rng in fs.requests if n == "m.onnx"] == ["bytes=0-0", None]  # the probe, then one GET


def test_the_parts_come_from_where_the_redirect_leads(file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    fs, url = file_server
    fs.files["cdn/m.onnx"] = DATA
    fs.redirect["m.onnx"] = "/files/cdn/m.onnx"
    assert fetched(source(url, tmp_path), tmp_path) == DATA
    assert [n for n, _ in fs.requests].count("m.onnx") == 1  # the probe followed it once
    assert len(parts_asked(fs, "cdn/m.onnx")) == 7


def test_wrong_bytes_in_a_part_install_nothing(file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    """Without a Content-Digest per part only the file's sha256 can tell: the whole file is refused."""
    fs, url = file_server
    fs.files["m.onnx"] = DATA
    fs.corrupt_at["m.onnx"] = 2 * PART
    with pytest.raises(IntegrityError, match="sha256"):
        fetched(source(url, tmp_path), tmp_path)
    assert not (tmp_path / "staging" / "m.onnx").exists()
    assert not list((tmp_path / "downloads").iterdir())  # the next run starts clean
    assert fetched(source(url, tmp_path), tmp_path) == DATA


def test_install_fetches_a_large_url_file_in_parts(settings: Settings, file_server: tuple[FileServer, str]) -> None:
    from tests.support.onnx_models import mlp_model

    fs, url = file_server
    data = mlp_model(features=4096, out=2600).SerializeToString()  # ~40 MiB: above the one-stream size
    fs.files["big.onnx"] = data
    r = install(parse_spec("acme/big@1"), settings, from_=f"{url}/files/big.onnx",
                sha256=hashlib.sha256(data).hexdigest())
    assert (r.path / "big.onnx").read_bytes() == data
    assert len(parts_asked(fs, "big.onnx")) == -(-len(data) // default_part_bytes(len(data), 8)) >= 2


def test_parts_are_sized_for_the_connections() -> None:
    assert default_part_bytes(10 * MiB, 8) == MIN_PART_BYTES
    assert default_part_bytes(2 << 30, 8) == 64 * MiB  # a 2 GiB file: 32 parts over 8 connections
    assert default_part_bytes(1 << 30, 8) == 32 * MiB


def test_a_large_hub_file_arrives_in_parts_from_the_cdn(hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    """The Hub's resolve URL redirects an LFS file to its CDN; the parts go there (with no token:
    the signed URL is the credential), a dropped part is fetched again alone, and the file is
    checked against the Hub's sha256."""
    from tests.support.onnx_models import mlp_model

    fake, url = hub
    fake.cdn = True
    model = mlp_model(features=1024, out=1536).SerializeToString()  # ~6 MiB: LFS
    fake.add_commit("acme/enc", {"model.onnx": model, "config.json": b"{}"})
    sha256 = hashlib.sha256(model).hexdigest()
    fake.drop_part_at[sha256] = 2 * PART
    (tmp_path / "downloads").mkdir()
    src = HubSource("acme/enc", "main", tmp_path / "downloads", endpoint=url, token="hf_secret", connections=4,
                    ranged_above=MiB, part_bytes=PART)
    rec = Recorder()
    result = src.fetch(tmp_path / "staging", rec)
    assert (tmp_path / "staging" / "model.onnx").read_bytes() == model
    assert result.digests["model.onnx"].sha256 == sha256
    parts = [rng for method, path, rng in fake.requests if path == f"/cdn/{sha256}" and rng != "bytes=0-0"
             and method == "GET"]
    n = -(-len(model) // PART)
    assert len(parts) == n + 1 and parts.count(f"bytes={2 * PART}-{3 * PART - 1}") == 2, parts
    # one bar for the whole install (the model and config.json), whatever was fetched twice
    assert rec.totals == [len(model) + 2] and len(rec.warnings) == 1 and "part 3/" in rec.warnings[0]
    assert rec.advanced == len(model) + 2


def test_a_hub_part_flipped_on_its_way_from_the_cdn_is_fetched_again_alone(
        hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    from tests.support.onnx_models import mlp_model

    fake, url = hub
    fake.cdn, fake.content_digest = True, True
    model = mlp_model(features=1024, out=1536).SerializeToString()
    fake.add_commit("acme/enc", {"model.onnx": model, "config.json": b"{}"})
    sha256 = hashlib.sha256(model).hexdigest()
    fake.corrupt_part_at[sha256] = 4 * PART
    (tmp_path / "downloads").mkdir()
    src = HubSource("acme/enc", "main", tmp_path / "downloads", endpoint=url, token=None, connections=4,
                    ranged_above=MiB, part_bytes=PART)
    rec = Recorder()
    result = src.fetch(tmp_path / "staging", rec)
    assert (tmp_path / "staging" / "model.onnx").read_bytes() == model
    assert result.digests["model.onnx"].sha256 == sha256
    parts = [rng for method, path, rng in fake.requests if path == f"/cdn/{sha256}" and rng != "bytes=0-0"
             and method == "GET"]
    assert len(parts) == -(-len(model) // PART) + 1 and parts.count(f"bytes={4 * PART}-{5 * PART - 1}") == 2
    assert len(rec.warnings) == 1 and "Content-Digest" in rec.warnings[0]


def test_the_token_never_goes_to_the_cdn() -> None:
    from axon.sources.hub import _headers_for

    auth = {"authorization": "Bearer hf_secret", "user-agent": "axon"}
    assert _headers_for("https://huggingface.co/a/b/resolve/c/m.onnx", None, auth) == auth
    assert _headers_for("https://cdn-lfs.hf.co/repos/x?sig=1", None, auth) == {"user-agent": "axon"}
    assert _headers_for("http://127.0.0.1:9/cdn/x", "http://127.0.0.1:9", auth) == auth
