"""Publishing a version that shares files with a published version of the same model links them:
the repository grows by the changed bytes only, and unpublish, rollback or a kill never touch the
other version's files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from axon.install import install
from axon.production import setup_production
from axon.publish import ProductionRepo, publish, rollback, unpublish
from axon.settings import Settings, set_config_value
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.onnx_models import write_mlp
from tests.support.publishing import distinct_bytes, visible_versions_verify
from tests.support.users import need_root, temp_group

WEIGHTS = os.urandom(3 << 20)
V1, V2 = "acme/shared@1", "acme/shared@2"


@pytest.fixture
def prod(shared_base: Path) -> Iterator[Settings]:
    need_root()
    with temp_group() as (gname, _gid):
        root = shared_base / "prod"
        setup_production(root, gname)
        env = {"HOME": str(shared_base / "home"), "AXON_HOME": str(shared_base / "home" / ".axon"),
               "AXON_CACHE_DIR": str(shared_base / "cache"), "AXON_PUBLISH_DIR": str(root)}
        settings = Settings.from_env(env)
        set_config_value(settings.config_file, "publish_group", gname)
        yield Settings.from_env(env)


def _install(settings: Settings, spec: str, vocab: str, tmp: Path) -> None:
    src = tmp / f"src-{vocab}"
    write_mlp(src / "model.onnx", seed=0)
    (src / "weights.bin").write_bytes(WEIGHTS)
    (src / "vocab.txt").write_text(vocab)
    install(parse_spec(spec), settings, from_=str(src), force=True)


def test_a_shared_file_is_linked_and_audited(prod: Settings, tmp_path: Path) -> None:
    _install(prod, V1, "a", tmp_path)
    first = publish(parse_spec(V1), prod)
    assert first.bytes_linked == 0 and first.bytes_copied == first.size
    before = distinct_bytes(prod.publish_dir)
    _install(prod, V2, "bb", tmp_path)
    second = publish(parse_spec(V2), prod)
    assert second.bytes_linked == len(WEIGHTS) + (first.size - len(WEIGHTS) - 1)  # weights and model.onnx
    assert second.bytes_copied == 2  # only the changed vocab.txt
    root = prod.publish_dir
    w1, w2 = root / "acme/shared/1/weights.bin", root / "acme/shared/2/weights.bin"
    assert os.stat(w1).st_ino == os.stat(w2).st_ino
    assert distinct_bytes(root) - before == second.bytes_copied + (root / "acme/shared/2/manifest.yaml").stat().st_size
    records, _ = ProductionRepo(prod).audit.read(V2)
    assert records[-1]["bytes_linked"] == second.bytes_linked and records[-1]["bytes_copied"] == 2
    assert len(visible_versions_verify(prod)) == 2

    unpublish(parse_spec(V1), prod)
    assert len(visible_versions_verify(prod)) == 1  # v2 still verifies without v1
    rollback(parse_spec(V1), prod)
    assert len(visible_versions_verify(prod)) == 2
    unpublish(parse_spec(V2), prod, purge=True)
    assert len(visible_versions_verify(prod)) == 1 and w1.read_bytes() == WEIGHTS


def test_a_replacing_publish_links_from_the_copy_it_replaces(prod: Settings, tmp_path: Path) -> None:
    _install(prod, V1, "a", tmp_path)
    publish(parse_spec(V1), prod)
    _install(prod, V1, "changed", tmp_path)
    r = publish(parse_spec(V1), prod, force=True)
    assert r.status == "replaced" and r.bytes_copied == len("changed")
    assert len(visible_versions_verify(prod)) == 1
    back = rollback(parse_spec(V1), prod)  # the replaced copy, sharing the files, verifies and returns
    assert back.status == "rolled-back" and len(visible_versions_verify(prod)) == 1


@pytest.mark.parametrize("point", ["publish:after-links", "publish:before-rename"])
def test_a_deduplicating_publish_killed_leaves_everything_whole(prod: Settings, tmp_path: Path, point: str) -> None:
    _install(prod, V1, "a", tmp_path)
    first = publish(parse_spec(V1), prod)
    _install(prod, V2, "bb", tmp_path)
    env = {**os.environ, "HOME": str(prod.home.parent), "AXON_HOME": str(prod.home),
           "AXON_CACHE_DIR": str(prod.cache_dir), "AXON_PUBLISH_DIR": str(prod.publish_dir)}
    proc = subprocess.run([sys.executable, "-m", "axon", "publish", V2, "-q"], env={**env, "AXON_CRASH_AT": point},
                          capture_output=True, check=False)
    assert proc.returncode == -9, proc.stderr
    assert visible_versions_verify(prod) == [first.digest]  # v1 whole, v2 not visible
    again = publish(parse_spec(V2), prod)  # the leftover staging is cleaned; the links are made anew
    assert again.bytes_linked and sorted(visible_versions_verify(prod)) == sorted([first.digest, again.digest])
    assert list(StoreLayout(prod.publish_dir).staging.iterdir()) == []
    assert os.stat(prod.publish_dir / "acme/shared/1/weights.bin").st_nlink == 2
