"""Publishing a version that shares files with a published version of the same model links them:
the repository grows by the changed bytes only, and unpublish, rollback or a kill never touch the
other version's files."""

from __future__ import annotations

import json
import os
import stat
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
from tests.support.publishing import distinct_bytes, user_env, visible_versions_verify
from tests.support.users import User, need_root, run_cli_as, temp_group, temp_user

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


# --- members of the publish group -----------------------------------------------------------


def _member_with_two_versions(base: Path, member: User, root: Path, gname: str, tmp: Path,
                              specs: tuple[str, ...] = (V1, V2)) -> dict[str, str]:
    env = user_env(base, member.name, root)
    settings = Settings.from_env(env)
    set_config_value(settings.config_file, "publish_group", gname)
    for i, spec in enumerate(specs):
        _install(settings, spec, "v" * (i + 1), tmp / member.name)
    subprocess.run(["chown", "-R", f"{member.uid}:{member.gid}", str(base / member.name)], check=True)
    return env


def test_a_member_links_their_own_files_and_never_another_members(shared_base: Path, tmp_path: Path) -> None:
    """A member's second version links the weights of their first; another member's version of
    the same model copies them (a link to someone else's file would be a file they cannot vouch
    for, owned by another user)."""
    need_root()
    with temp_group() as (gname, gid), temp_user([gname]) as alice, temp_user([gname]) as bob:
        root = shared_base / "prod"
        setup_production(root, gname)
        env_a = _member_with_two_versions(shared_base, alice, root, gname, tmp_path)
        for spec in (V1, V2):
            r = run_cli_as(alice, ["publish", spec, "--json"], env_a)
            assert r.code == 0, r.stderr
        second = json.loads(r.stdout)
        assert second["bytes_linked"] >= len(WEIGHTS) and second["bytes_copied"] == 2
        w1, w2 = (os.stat(root / f"acme/shared/{v}/weights.bin") for v in (1, 2))
        assert w1.st_ino == w2.st_ino and w1.st_uid == alice.uid and w1.st_gid == gid
        assert stat.S_IMODE(w1.st_mode) == 0o444

        setup_production(root, gname)  # alice made acme/shared: the repository's now, so bob may publish there
        env_b = _member_with_two_versions(shared_base, bob, root, gname, tmp_path, specs=("acme/shared@3",))
        r = run_cli_as(bob, ["publish", "acme/shared@3", "--json"], env_b)
        assert r.code == 0, r.stderr
        assert json.loads(r.stdout)["bytes_linked"] == 0
        w3 = os.stat(root / "acme/shared/3/weights.bin")
        assert w3.st_ino != w1.st_ino and w3.st_uid == bob.uid and w3.st_nlink == 1
        assert len(visible_versions_verify(Settings.from_env(env_a))) == 3


def test_root_taking_over_a_members_version_leaves_their_other_version_theirs(
        shared_base: Path, tmp_path: Path) -> None:
    """Root unpublishes (takes over) a member's version whose weights are linked with the member's
    other version: that one keeps its own file, owned by the member, and still verifies."""
    need_root()
    with temp_group() as (gname, gid), temp_user([gname]) as member:
        root = shared_base / "prod"
        setup_production(root, gname)
        env = _member_with_two_versions(shared_base, member, root, gname, tmp_path)
        for spec in (V1, V2):
            assert run_cli_as(member, ["publish", spec], env).code == 0
        assert os.stat(root / "acme/shared/1/weights.bin").st_nlink == 2
        root_env = {"HOME": str(shared_base / "home"), "AXON_HOME": str(shared_base / "home" / ".axon"),
                    "AXON_CACHE_DIR": str(shared_base / "cache"), "AXON_PUBLISH_DIR": str(root)}
        as_root = Settings.from_env(root_env)
        set_config_value(as_root.config_file, "publish_group", gname)
        unpublish(parse_spec(V2), Settings.from_env(root_env))
        w1 = os.stat(root / "acme/shared/1/weights.bin")
        assert (w1.st_uid, w1.st_gid, w1.st_nlink, stat.S_IMODE(w1.st_mode)) == (member.uid, gid, 1, 0o444)
        assert (root / "acme/shared/1/weights.bin").read_bytes() == WEIGHTS
        assert len(visible_versions_verify(as_root)) == 1
        rollback(parse_spec(V2), Settings.from_env(root_env))  # root's copy comes back, the member's stays theirs
        w2 = os.stat(root / "acme/shared/2/weights.bin")
        assert w2.st_uid == 0 and w2.st_ino != w1.st_ino
        assert os.stat(root / "acme/shared/1/weights.bin").st_uid == member.uid
        assert len(visible_versions_verify(as_root)) == 2
