"""A serving host's cache directory: made root:<group> 2750 and marked; anything else given as one
(a production repository, a directory with files) is refused before a byte in it is touched, by
the fetch, by the eviction and by ``mlos-core serve``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from axon.errors import UsageError
from axon.store.cache_dir import CACHE_MARKER, CACHE_ROOT_MODE, open_cache_dir
from axon.store.object_cache import evict
from axon.store.spec import parse_spec
from tests.support.users import temp_group


def test_a_new_directory_becomes_a_root_group_cache(tmp_path: Path) -> None:
    with temp_group() as (group, gid):
        root = tmp_path / "var" / "cache" / "models"
        assert open_cache_dir(root, group=group)
        st = root.stat()
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, CACHE_ROOT_MODE)
        assert (root / CACHE_MARKER).is_file()
        assert open_cache_dir(root, group=group)  # marked: accepted again, whatever it holds now


def test_an_empty_or_missing_directory(tmp_path: Path) -> None:
    assert not open_cache_dir(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert open_cache_dir(tmp_path / "empty", group=None)
    (tmp_path / "only-axon" / ".axon" / "core").mkdir(parents=True)  # an unmarked cache of an earlier release
    assert open_cache_dir(tmp_path / "only-axon", group=None)


@pytest.mark.parametrize("what", ["repository", "files", "file"])
def test_something_else_is_refused_and_left_alone(tmp_path: Path, what: str) -> None:
    root = tmp_path / "dir"
    version = root / "acme" / "ranker" / "1"
    if what == "file":
        root.write_text("not a directory")
    else:
        version.mkdir(parents=True)
        (version / "model.onnx").write_bytes(b"published")
        if what == "repository":
            (root / ".axon").mkdir()
            (root / ".axon" / "repository.yaml").write_text("group: mlos\n")
    with pytest.raises(UsageError, match="is not an MLOS Core cache directory"):
        open_cache_dir(root)
    with pytest.raises(UsageError, match="is not an MLOS Core cache directory"):
        evict(root, keep=[parse_spec("other/model@1")])
    if what != "file":
        assert (version / "model.onnx").read_bytes() == b"published"
        assert not (root / CACHE_MARKER).exists()


def test_serve_refuses_a_repository_as_its_cache_dir(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / ".axon").mkdir(parents=True)
    (repo / ".axon" / "repository.yaml").write_text("group: mlos\n")
    r = subprocess.run([sys.executable, "-m", "mlos_core", "serve", "--repository", "s3://models/prod",
                        "--cache-dir", str(repo), "--port", "0"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 2 and "is a production repository" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_axon_finds_the_token_of_a_server_serving_an_s3_repository(s3_settings: object,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With publish_dir s3://…, the server's default state lives in its default cache directory."""
    from axon.core_client import default_token_file
    from axon.store.cache_dir import DEFAULT_CACHE_DIR
    from mlos_core.settings import ServerSettings

    monkeypatch.delenv("MLOS_CORE_TOKEN_FILE", raising=False)
    served = ServerSettings.load(None, repository=str(s3_settings.publish_store))  # type: ignore[attr-defined]
    assert default_token_file(s3_settings) == served.token_file == DEFAULT_CACHE_DIR / ".axon" / "core" / "token"  # type: ignore[arg-type]


def test_a_symlink_or_a_marked_repository_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    assert open_cache_dir(real, group=None)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UsageError, match="not a directory"):
        open_cache_dir(tmp_path / "link")
    (real / ".axon" / "repository.yaml").write_text("group: mlos\n")  # a mark does not make a repository a cache
    with pytest.raises(UsageError, match="is a production repository"):
        open_cache_dir(real)
    planted = tmp_path / "planted"
    (planted / ".axon").mkdir(parents=True)
    (planted / "acme").mkdir()
    (planted / ".axon" / "cache.yaml").symlink_to(real / CACHE_MARKER)  # a mark through a symlink is no mark
    with pytest.raises(UsageError, match="holds files"):
        open_cache_dir(planted)


def cached_version(root: Path, spec: str) -> Path:
    path = root / parse_spec(spec).relpath
    path.mkdir(parents=True)
    (path / "manifest.yaml").write_text("a cached manifest\n")
    return path


def test_eviction_skips_what_is_in_use_or_holds_a_kept_version(tmp_path: Path) -> None:
    from axon.store.object_cache import hold_in_use, release_in_use

    root = tmp_path / "cache"
    open_cache_dir(root, group=None)
    busy = cached_version(root, "acme/busy@1")
    outer = cached_version(root, "acme/org@repo")  # acme/org/repo/: the parent of acme/org/repo@v1's directory
    inner = cached_version(root, "acme/org/repo@v1")
    fd = hold_in_use(root, parse_spec("acme/busy@1"))  # being fetched or loaded (a shared lock, any process)
    try:
        assert evict(root, keep=[parse_spec("acme/org/repo@v1")]) == []
        assert busy.exists() and outer.exists() and inner.exists()
    finally:
        release_in_use(fd)
    assert evict(root, keep=[parse_spec("acme/org/repo@v1")]) == [parse_spec("acme/busy@1")]
    assert not busy.exists() and inner.exists()
