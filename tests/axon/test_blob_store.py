"""The dev cache stores every file once, by its sha256: versions sharing files share their blobs,
an install fetches only what the store lacks, and removing one version never damages another."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from axon import cache
from axon.install import install
from axon.settings import Settings
from axon.store.blobs import BlobStore
from axon.store.fastio import FileDigest
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from axon.update import update
from tests.support.file_server import FileServer
from tests.support.hub_server import FakeHub
from tests.support.onnx_models import mlp_model

TOKENIZER = b'{"version": "1.0", "model": {"type": "WordPiece"}}'


def _hub_settings() -> Settings:
    return Settings.from_env(dict(os.environ))  # after the hub fixture set HF_ENDPOINT


def _requested(fake: FakeHub, name: str) -> list[str]:
    return [p for _, p, _ in fake.requests if p.endswith("/" + name)]


def _inode(path: Path) -> tuple[int, int]:
    st_ = os.lstat(path)
    return st_.st_dev, st_.st_ino


def _reflinks(store: BlobStore) -> bool:
    return store._reflinks is True  # learnt on the first placement


def test_two_revisions_share_their_common_files(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    settings = _hub_settings()
    model = mlp_model(seed=1, features=256, out=256).SerializeToString()
    fake.add_commit("org/m", {"model.onnx": model, "tokenizer.json": TOKENIZER, "config.json": b'{"a": 1}'}, ref="v1")
    fake.add_commit("org/m", {"model.onnx": model, "tokenizer.json": TOKENIZER, "config.json": b'{"a": 2}'}, ref="v2")
    v1, v2 = parse_spec("hf/org/m@v1"), parse_spec("hf/org/m@v2")
    first = install(v1, settings)
    fake.requests.clear()
    second = install(v2, settings)
    # only the changed file came over the network: the model and the tokenizer were in the store
    assert _requested(fake, "model.onnx") == [] and _requested(fake, "tokenizer.json") == []
    assert len(_requested(fake, "config.json")) >= 1
    assert cache.verify(settings.cache_dir, v1).ok and cache.verify(settings.cache_dir, v2).ok
    store = StoreLayout(settings.cache_dir).blobs
    blob = store.path(hashlib.sha256(model).hexdigest())
    assert (first.path / "model.onnx").read_bytes() == (second.path / "model.onnx").read_bytes() == model
    if not _reflinks(store):  # read-only hard links: one inode for both versions and the blob
        assert _inode(first.path / "model.onnx") == _inode(second.path / "model.onnx") == _inode(blob)
    assert os.stat(second.path / "model.onnx").st_mode & 0o777 == 0o444

    s = cache.stats(settings.cache_dir)
    unique = len(model) + len(TOKENIZER) + 2 * len(b'{"a": 1}')
    assert s["logical_bytes"] == first.manifest.total_size + second.manifest.total_size
    assert s["physical_bytes"] == unique < s["logical_bytes"]
    assert s["blobs"] == 4 and s["blob_bytes"] == unique

    cache.remove(settings.cache_dir, v1)  # the other version keeps every file, and the shared blobs stay
    assert cache.verify(settings.cache_dir, v2).ok and blob.exists()
    assert not store.find(hashlib.sha256(b'{"a": 1}').hexdigest())  # v1's own config went with it
    cache.remove(settings.cache_dir, v2)
    assert not blob.exists() and list(store.blobs()) == []


def test_removing_the_newer_version_leaves_the_older_intact(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    settings = _hub_settings()
    model = mlp_model(seed=2).SerializeToString()
    for ref, cfg in (("v1", b"{}"), ("v2", b'{"x": 0}')):
        fake.add_commit("org/m", {"model.onnx": model, "config.json": cfg}, ref=ref)
        install(parse_spec(f"hf/org/m@{ref}"), settings)
    cache.remove(settings.cache_dir, parse_spec("hf/org/m@v2"))
    report = cache.verify(settings.cache_dir, parse_spec("hf/org/m@v1"))
    assert report.ok and report.files_checked == 2


def test_update_to_a_revision_that_changed_a_small_file_fetches_only_it(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    settings = _hub_settings()
    model = mlp_model(seed=3, features=256, out=256).SerializeToString()
    fake.add_commit("org/m", {"model.onnx": model, "tokenizer.json": TOKENIZER, "config.json": b"{}"})
    spec = parse_spec("hf/org/m")
    first = install(spec, settings)
    fake.add_commit("org/m", {"model.onnx": model, "tokenizer.json": TOKENIZER, "config.json": b'{"new": 1}'})
    fake.requests.clear()
    r = update(spec, settings)
    assert r.status == "replaced" and r.manifest.digest != first.manifest.digest
    assert _requested(fake, "model.onnx") == [] and _requested(fake, "tokenizer.json") == []
    assert cache.verify(settings.cache_dir, spec).ok
    assert (r.path / "config.json").read_bytes() == b'{"new": 1}'
    # the replaced version's own file is collectable; the shared ones are in use
    gc = cache.gc(settings.cache_dir)
    assert [p for p in gc.removed if "/blobs/" in p] == [str(StoreLayout(settings.cache_dir).blobs.path(
        hashlib.sha256(b"{}").hexdigest()))]
    assert cache.verify(settings.cache_dir, spec).ok


def test_a_local_install_of_the_same_bytes_is_stored_once(settings: Settings, tmp_path: Path) -> None:
    data = mlp_model(seed=4).SerializeToString()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(data)
    a = install(parse_spec("acme/x@1"), settings, from_=str(tmp_path / "a"))
    b = install(parse_spec("acme/x@2"), settings, from_=str(tmp_path / "b"))
    store = StoreLayout(settings.cache_dir).blobs
    if not _reflinks(store):
        assert _inode(a.path / "model.onnx") == _inode(b.path / "model.onnx")
    assert cache.stats(settings.cache_dir)["physical_bytes"] == len(data)
    assert (tmp_path / "a" / "model.onnx").stat().st_nlink == 1  # the source is never linked, only copied


def test_a_url_with_a_known_sha256_already_stored_is_not_downloaded(
        settings: Settings, file_server: tuple[FileServer, str], tmp_path: Path) -> None:
    fs, url = file_server
    data = mlp_model(seed=5).SerializeToString()
    fs.files["m.onnx"] = data
    sha = hashlib.sha256(data).hexdigest()
    install(parse_spec("acme/u@1"), settings, from_=f"{url}/files/m.onnx", sha256=sha)
    fs.files.pop("m.onnx")  # gone from the server: the second install cannot have fetched it
    r = install(parse_spec("acme/u@2"), settings, from_=f"{url}/files/m.onnx", sha256=sha)
    assert (r.path / "m.onnx").read_bytes() == data and cache.verify(settings.cache_dir, r.spec).ok


def test_gc_drops_blobs_no_version_uses_and_leaves_a_busy_store_alone(settings: Settings, tmp_path: Path) -> None:
    from axon.store.nofollow import remove_tree

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.onnx").write_bytes(mlp_model(seed=6).SerializeToString())
    keep = install(parse_spec("acme/g@1"), settings, from_=str(tmp_path / "src"))
    (tmp_path / "src" / "model.onnx").write_bytes(mlp_model(seed=7).SerializeToString())
    gone = install(parse_spec("acme/g@2"), settings, from_=str(tmp_path / "src"))
    remove_tree(gone.path)  # deleted by hand: its blob is now used by nobody
    store = StoreLayout(settings.cache_dir).blobs
    orphan = store.path(gone.manifest.files[0].sha256)
    assert orphan.exists()
    with store.in_use():  # an install is running: its blobs may not be listed by any version yet
        busy = cache.gc(settings.cache_dir)
    assert busy.blobs_busy and orphan.exists()
    dry = cache.gc(settings.cache_dir, dry_run=True)
    assert str(orphan) in dry.removed and orphan.exists()
    report = cache.gc(settings.cache_dir)
    assert str(orphan) in report.removed and not orphan.exists()
    assert not orphan.with_name(orphan.name + ".json").exists()
    assert cache.verify(settings.cache_dir, keep.spec).ok


def test_small_hub_files_arrive_concurrently(hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    fake.hold_small_s = 0.2
    files = {"tokenizer.json": TOKENIZER, "config.json": b'{"c": 1}', "vocab.txt": b"[PAD]\n[UNK]\n",
             "special_tokens_map.json": b"{}"}
    fake.add_commit("org/s", {"model.onnx": mlp_model(seed=8).SerializeToString(), **files})
    r = install(parse_spec("hf/org/s"), _hub_settings())
    assert fake.max_in_flight > 1
    assert all((r.path / name).read_bytes() == data for name, data in files.items())


def test_a_corrupted_blob_record_is_not_trusted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"weights" * 100
    f = tmp_path / "f"
    f.write_bytes(data)
    digest = FileDigest(len(data), hashlib.sha256(data).hexdigest(), "0" * 32)
    assert store.adopt(f, digest) is False and store.find(digest.sha256) == digest
    meta = store.path(digest.sha256).with_name(digest.sha256 + ".json")
    meta.write_text(json.dumps({"size": len(data) + 1, "xxh3_128": "0" * 32}))
    assert store.find(digest.sha256) is None  # a record that disagrees with the blob: not stored


@hsettings(max_examples=60, deadline=None)
@given(record=st.binary(max_size=200), index=st.binary(max_size=100))
def test_whatever_the_records_hold_a_lookup_never_fails(tmp_path_factory: pytest.TempPathFactory,
                                                        record: bytes, index: bytes) -> None:
    root = tmp_path_factory.mktemp("blobs")
    store = BlobStore(root)
    data = b"x" * 10
    sha = hashlib.sha256(data).hexdigest()
    blob = store.path(sha)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    blob.with_name(sha + ".json").write_bytes(record)
    git = store.root / "git-sha1" / "ab" / ("ab" + "0" * 38)
    git.parent.mkdir(parents=True)
    git.write_bytes(index)
    for found in (store.find(sha), store.find_git("ab" + "0" * 38)):
        assert found is None or (found.size == 10 and found.sha256 == sha and len(found.xxh3_128) == 32)


def test_on_a_reflink_file_system_versions_share_blocks_not_inodes(tmp_path: Path) -> None:
    """XFS with reflink: each version's file is its own inode (not a hard link) sharing the blob's
    blocks, so the second version costs no space, and root writing into one version's file leaves
    the other's bytes alone (copy on write)."""
    from tests.support.mounts import physical_extents, xfs_reflink

    with xfs_reflink(tmp_path / "xfs", size="320M") as mnt:
        settings = Settings.from_env({"HOME": str(mnt / "home"), "AXON_HOME": str(mnt / "home" / ".axon"),
                                      "AXON_CACHE_DIR": str(mnt / "cache")})
        weights = os.urandom(48 << 20)
        for i in (1, 2):
            src = tmp_path / f"src{i}"
            src.mkdir()
            (src / "model.onnx").write_bytes(mlp_model(seed=1).SerializeToString())
            (src / "weights.bin").write_bytes(weights)
            (src / "vocab.txt").write_text("v" * i)
        install(parse_spec("acme/m@1"), settings, from_=str(tmp_path / "src1"))
        v2 = install(parse_spec("acme/m@2"), settings, from_=str(tmp_path / "src2"))
        store = StoreLayout(settings.cache_dir).blobs
        w1, w2 = (settings.cache_dir / "acme/m" / v / "weights.bin" for v in ("1", "2"))
        blob = store.path(hashlib.sha256(weights).hexdigest())
        assert len({_inode(w1), _inode(w2), _inode(blob)}) == 3 and os.lstat(w1).st_nlink == 1
        extents = physical_extents(blob)
        assert extents and physical_extents(w1) == extents == physical_extents(w2)  # the same blocks, once
        stats = cache.stats(settings.cache_dir)
        assert stats["logical_bytes"] - stats["physical_bytes"] >= len(weights)  # the weights counted once
        os.chmod(w2, 0o644)
        with open(w2, "r+b") as f:
            f.write(b"\0" * 16)
        assert w1.read_bytes() == weights and blob.read_bytes() == weights  # copy on write
        cache.remove(settings.cache_dir, parse_spec("acme/m@1"))
        assert v2.path.exists() and (v2.path / "vocab.txt").read_text() == "vv"
