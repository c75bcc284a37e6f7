"""The production repository as a trust boundary, attacked as a member, a local user and with root.

Real users and groups (root only), real files, the real CLI; each test is one attack that
today's code must refuse, and each checks that nothing the attacker wanted happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from axon.errors import AxonError, IntegrityError
from axon.production import setup_production
from axon.publish import ProductionRepo, publish, published, rollback
from axon.settings import Settings, set_config_value
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.publishing import SPEC, install_package, prepare_user, user_env, visible_versions_verify
from tests.support.users import User, need_root, run_as, run_cli_as, temp_group, temp_user

pytestmark = pytest.mark.root


@pytest.fixture
def repo(shared_base: Path) -> Iterator[tuple[Path, str, int]]:
    """A production repository made by setup-production: (root, group name, gid)."""
    need_root()
    with temp_group() as (gname, gid):
        root = shared_base / "prod"
        setup_production(root, gname)
        yield root, gname, gid


def _root_settings(tmp_path: Path, prod_root: Path, cache: Path | None = None) -> Settings:
    env = {"HOME": str(tmp_path / "roothome"), "AXON_HOME": str(tmp_path / "roothome" / ".axon"),
           "AXON_CACHE_DIR": str(cache or tmp_path / "rootcache"), "AXON_PUBLISH_DIR": str(prod_root)}
    return Settings.from_env(env)


def test_setup_production_modes_and_group_record(repo: tuple[Path, str, int]) -> None:
    root, gname, gid = repo
    expected = {root: 0o3775, root / ".axon": 0o2755, root / ".axon" / "staging": 0o3775,
                root / ".axon" / "locks": 0o3775, root / ".axon" / "history": 0o3775,
                root / ".axon" / "audit.d": 0o3775, root / ".axon" / "core": 0o2750}
    for path, mode in expected.items():
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, mode), path
    record = (root / ".axon" / "repository.yaml").read_text()
    assert f"group: {gname}" in record


def test_setup_production_runs_again_over_its_append_only_audit_log(repo: tuple[Path, str, int]) -> None:
    """Its own hints send the administrator back to setup-production: a second run (and one with
    another group) must succeed over the audit log that the first made append-only."""
    root, gname, gid = repo
    audit = root / ".axon" / "audit.log"
    first = setup_production(root, gname)
    with temp_group() as (other, other_gid):
        again = setup_production(root, other)
        st = os.lstat(audit)
        assert (st.st_uid, st.st_gid) == (0, other_gid) and again["record"]
        if first["audit_append_only"]:
            assert again["audit_append_only"]
            with pytest.raises(PermissionError):
                os.open(audit, os.O_WRONLY | os.O_TRUNC)  # still append-only, even for root
        setup_production(root, gname)  # back to the first group before it goes
    assert os.lstat(audit).st_gid == gid


def test_member_of_the_recorded_group_publishes_without_configuration(repo: tuple[Path, str, int],
                                                                       shared_base: Path, tmp_path: Path) -> None:
    root, gname, gid = repo
    with temp_user([gname]) as member:
        env = user_env(shared_base, member.name, root)  # no publish_group anywhere: the default 'mlos'
        install_package(Settings.from_env(env), tmp_path)
        subprocess.run(["chown", "-R", f"{member.uid}:{member.gid}", str(shared_base / member.name)], check=True)
        r = run_cli_as(member, ["publish", SPEC, "--json"], env)
        assert r.code == 0, r.stderr
        assert os.stat(root / "acme" / "ranker" / "1.0.0").st_gid == gid


def test_publish_refuses_a_cached_model_whose_graph_reaches_outside(repo: tuple[Path, str, int],
                                                                     tmp_path: Path) -> None:
    """The cache owner rewrites model.onnx after install (hashes fixed up in the manifest) so a
    subgraph tensor names external data outside the version: publish refuses it (exit 2)."""
    import dataclasses

    import onnx

    from axon.errors import InvalidModelError
    from axon.store.fastio import hash_file
    from axon.store.manifest import FileEntry, load_manifest, write_manifest
    from tests.support.onnx_models import model_with_hidden_tensor

    root, _, _ = repo
    settings = _root_settings(tmp_path, root)
    install_package(settings, tmp_path)
    cached = settings.cache_dir / "acme" / "ranker" / "1.0.0"
    onnx.save(model_with_hidden_tensor("nested_if", "../../../../../etc/hostname"), cached / "model.onnx")
    m = load_manifest(cached / "manifest.yaml")
    d = hash_file(cached / "model.onnx")
    files = [FileEntry(f.path, d.size, d.sha256, d.xxh3_128) if f.path == "model.onnx" else f for f in m.files]
    write_manifest(cached, dataclasses.replace(m, files=files, digest=""))
    with pytest.raises(InvalidModelError, match=r"names external data .* climbs out") as info:
        publish(parse_spec(SPEC), settings)
    assert info.value.exit_code == 2
    assert visible_versions_verify(settings) == []
    assert list(StoreLayout(root).staging.iterdir()) == []


# --- a member tampering with the repository ----------------------------------------------------


@contextlib.contextmanager
def _two_members(repo: tuple[Path, str, int], shared_base: Path, tmp_path: Path) -> Iterator[tuple[User, User]]:
    root, gname, _ = repo
    with temp_user([gname]) as bob, temp_user([gname]) as alice:
        for who in (bob, alice):
            prepare_user(shared_base, who, root, gname, tmp_path)
        yield bob, alice


def test_member_cannot_rename_state_or_hide_another_members_version(repo: tuple[Path, str, int],
                                                                     shared_base: Path, tmp_path: Path) -> None:
    root, _, _ = repo
    with _two_members(repo, shared_base, tmp_path) as (bob, alice):
        r = run_cli_as(bob, ["publish", SPEC], user_env(shared_base, bob.name, root))
        assert r.code == 0, r.stderr
        version = root / "acme" / "ranker" / "1.0.0"
        audit_before = (root / ".axon" / "audit.log").read_bytes()
        attempts = {
            "rename .axon": lambda: os.rename(root / ".axon", root / ".axon-forged"),
            "replace the audit log": lambda: os.rename(root / ".axon" / "audit.log", root / ".axon" / "old.log"),
            "plant in .axon": lambda: os.mkdir(root / ".axon" / "evil"),
            "hide the version": lambda: os.rename(version, version.with_name("hidden")),
            "hide the model": lambda: os.rename(root / "acme" / "ranker", root / "acme" / "gone"),
            "hide the namespace": lambda: os.rename(root / "acme", root / "acme-gone"),
            "remove history": lambda: os.rename(root / ".axon" / "history" / "acme~ranker@1.0.0",
                                                root / ".axon" / "history" / "x"),
            "rewrite the audit log": lambda: open(root / ".axon" / "audit.log", "w").close(),
        }
        outcomes = {what: run_as(alice, fn) for what, fn in attempts.items()}
        assert outcomes == dict.fromkeys(attempts, "PermissionError")
        assert visible_versions_verify(_root_settings(tmp_path, root)) != []
        assert (root / ".axon" / "audit.log").read_bytes() == audit_before


def test_forged_audit_record_is_reported_and_genuine_ones_attested(repo: tuple[Path, str, int], shared_base: Path,
                                                                    tmp_path: Path) -> None:
    root, gname, _ = repo
    with temp_user([gname]) as alice:
        env = prepare_user(shared_base, alice, root, gname, tmp_path)
        assert run_cli_as(alice, ["publish", SPEC], env).code == 0
        forged = {"action": "publish", "spec": "acme/other@1.0.0", "result": "ok", "user": "root", "uid": 0,
                  "host": "x", "time": "2026-01-01T00:00:00.000000Z", "digest_new": "f" * 32,
                  "receipt": "nonexistent.json"}

        def append_forgery() -> None:
            with open(root / ".axon" / "audit.log", "a") as f:
                f.write(json.dumps(forged) + "\n")
                f.write(json.dumps({**forged, "receipt": None}) + "\n")

        assert run_as(alice, append_forgery) == "ok"  # members may append: that is how they publish
        records, problems = ProductionRepo(_root_settings(tmp_path, root)).audit.read()
        assert [r["attested"] for r in records] == [True, False, False]
        assert records[0]["uid"] == alice.uid
        assert any("receipt nonexistent.json of this record is missing" in p for p in problems)
        assert any("no receipt" in p for p in problems)
        rows = {r["spec"]: r for r in published(_root_settings(tmp_path, root))}
        assert rows[SPEC]["publisher"] == alice.name


def test_version_rewritten_in_place_by_its_publisher_is_detected(repo: tuple[Path, str, int], shared_base: Path,
                                                                   tmp_path: Path, axon_cli: object) -> None:
    """A member owns what they published and can rewrite files and manifest consistently; the
    audit trail's recorded digest still tells (verify --published, exit 3)."""
    import dataclasses

    from axon.store.fastio import hash_file
    from axon.store.manifest import FileEntry, load_manifest, write_manifest

    root, gname, _ = repo
    with temp_user([gname]) as alice:
        env = prepare_user(shared_base, alice, root, gname, tmp_path)
        assert run_cli_as(alice, ["publish", SPEC], env).code == 0
        version = root / "acme" / "ranker" / "1.0.0"

        def rewrite() -> None:
            os.chmod(version, 0o755)
            os.chmod(version / "tokenizer", 0o755)
            vocab = version / "tokenizer" / "vocab.txt"
            os.chmod(vocab, 0o644)
            vocab.write_text("[PAD]\n[UNK]\nswapped\n")
            m = load_manifest(version / "manifest.yaml")
            d = hash_file(vocab)
            files = [FileEntry(f.path, d.size, d.sha256, d.xxh3_128) if f.path == "tokenizer/vocab.txt" else f
                     for f in m.files]
            os.chmod(version / "manifest.yaml", 0o644)
            write_manifest(version, dataclasses.replace(m, files=files, digest=""))

        assert run_as(alice, rewrite) == "ok"
        r = axon_cli("verify", "--published", SPEC, env={"AXON_PUBLISH_DIR": str(root)})  # type: ignore[operator]
        assert r.code == 3 and "changed in place after publishing" in r.stderr, r.stderr


def test_member_cannot_publish_into_a_namespace_another_member_owns(repo: tuple[Path, str, int],
                                                                     shared_base: Path, tmp_path: Path) -> None:
    root, _, _ = repo
    with _two_members(repo, shared_base, tmp_path) as (bob, alice):
        assert run_as(alice, lambda: os.mkdir(root / "acme", 0o2775)) == "ok"  # alice squats the namespace
        r = run_cli_as(bob, ["publish", SPEC], user_env(shared_base, bob.name, root))
        assert r.code == 4 and "could rename or hide what you publish there" in r.stderr, r.stderr
        assert not (root / "acme" / "ranker").exists()


def test_planted_lock_symlink_is_not_followed_by_root(repo: tuple[Path, str, int], shared_base: Path,
                                                       tmp_path: Path) -> None:
    root, gname, _ = repo
    with temp_user([gname]) as alice:
        victim = shared_base / "created-by-root"
        lock = root / ".axon" / "locks" / "acme~ranker@1.0.0.lock"
        assert run_as(alice, lambda: os.symlink(victim, lock)) == "ok"
        settings = _root_settings(tmp_path, root)
        install_package(settings, tmp_path)
        with pytest.raises(AxonError, match="is a symlink"):
            publish(parse_spec(SPEC), settings)
        assert not os.path.lexists(victim)
        assert visible_versions_verify(settings) == []


def test_symlink_planted_as_a_version_is_not_followed_by_root(repo: tuple[Path, str, int], shared_base: Path,
                                                               tmp_path: Path) -> None:
    root, gname, _ = repo
    private = tmp_path / "private-models" / "1.0.0"  # root-only
    private.mkdir(parents=True)
    (private / "manifest.yaml").write_text("not for members\n")
    with temp_user([gname]) as alice:
        def plant() -> None:
            os.makedirs(root / "acme" / "ranker")
            os.symlink(private, root / "acme" / "ranker" / "1.0.0")

        assert run_as(alice, plant) == "ok"
        settings = _root_settings(tmp_path, root)
        install_package(settings, tmp_path)
        for force in (False, True):
            with pytest.raises(AxonError, match="is a symlink, not a version directory"):
                publish(parse_spec(SPEC), settings, force=force)
        assert sorted(os.listdir(private)) == ["manifest.yaml"]


def test_planted_history_copy_is_never_restored(repo: tuple[Path, str, int], shared_base: Path,
                                                 tmp_path: Path) -> None:
    """alice squats the history of a version root will publish and plants a self-consistent copy
    named to sort last; root's rollback restores root's own replaced copy, never the plant."""
    root, gname, _ = repo
    with temp_user([gname]) as alice:
        alice_env = prepare_user(shared_base, alice, root, gname, tmp_path)
        alice_cache = Path(alice_env["AXON_CACHE_DIR"]) / "acme" / "ranker" / "1.0.0"
        history = root / ".axon" / "history" / "acme~ranker@1.0.0"
        plant = history / "29991231T235959.999999-evil"

        def squat() -> None:
            os.mkdir(history, 0o2775)
            subprocess.run(["cp", "-r", str(alice_cache), str(plant)], check=True)

        assert run_as(alice, squat) == "ok"
        settings = _root_settings(tmp_path, root)
        first = install_package(settings, tmp_path, seed=5)
        publish(parse_spec(SPEC), settings)
        second = install_package(settings, tmp_path, seed=6)
        publish(parse_spec(SPEC), settings, force=True)
        assert os.stat(history).st_uid == 0  # root took the history over
        assert run_as(alice, lambda: os.mkdir(history / "29991231T235959.999999-again")) == "PermissionError"
        result = rollback(parse_spec(SPEC), settings)
        assert result.digest == first != second
        assert visible_versions_verify(settings) == [first]


def test_tampered_history_copy_is_refused_and_nothing_changes(repo: tuple[Path, str, int], tmp_path: Path,
                                                               axon_cli: object) -> None:
    root, _, _ = repo
    settings = _root_settings(tmp_path, root)
    install_package(settings, tmp_path, seed=1)
    publish(parse_spec(SPEC), settings)
    second = install_package(settings, tmp_path, seed=2)
    publish(parse_spec(SPEC), settings, force=True)
    [entry] = ProductionRepo(settings).history_entries(parse_spec(SPEC))
    vocab = entry / "tokenizer" / "vocab.txt"
    os.chmod(vocab.parent, 0o755)
    os.chmod(vocab, 0o644)
    vocab.write_bytes(b"X" + vocab.read_bytes()[1:])  # same size, different bytes
    with pytest.raises(IntegrityError, match="does not match its manifest") as info:
        rollback(parse_spec(SPEC), settings)
    assert info.value.exit_code == 3
    assert visible_versions_verify(settings) == [second]
    assert ProductionRepo(settings).history_entries(parse_spec(SPEC)) == [entry]
    records, _ = ProductionRepo(settings).audit.read(SPEC)
    assert records[-1]["action"] == "publish"  # no rollback recorded


def _plant_staging(user: User, root: Path, spec_text: str, digest: str, manifest: str, tag: str) -> str:
    """As *user*: a directory in staging named like a killed --force of a dead process."""
    from axon.store.layout import version_key
    from axon.store.spec import ModelSpec

    ns, rest = spec_text.split("/", 1)
    name, version = rest.rsplit("@", 1)
    key = version_key(ModelSpec(ns, name, version)).replace("/", "_")
    planted = root / ".axon" / "staging" / f"{key}.999999.x{digest}.{tag}"

    def plant() -> None:
        planted.mkdir()
        (planted / "manifest.yaml").write_text(manifest)

    assert run_as(user, plant) == "ok"
    return str(planted)


def test_planted_staging_directory_is_never_recovered_into_anyones_history(repo: tuple[Path, str, int],
                                                                            shared_base: Path,
                                                                            tmp_path: Path) -> None:
    """A member plants "interrupted --force" leftovers: one whose manifest names a spec that
    climbs out of the repository, one naming root's version. Root's next command removes both
    and moves neither anywhere."""
    root, gname, _ = repo
    settings = _root_settings(tmp_path, root)
    install_package(settings, tmp_path, seed=1)
    publish(parse_spec(SPEC), settings)
    own = (settings.cache_dir / "acme" / "ranker" / "1.0.0" / "manifest.yaml").read_text()
    digest = publish(parse_spec(SPEC), settings).digest  # unchanged: the published digest
    outside = tmp_path / "victim"
    outside.mkdir()
    before = os.stat(outside)
    with temp_user([gname]) as alice:
        climbing = own.replace("version: 1.0.0", "version: 1.0.0/../../../../../../../" + str(outside).strip("/"))
        plants = [_plant_staging(alice, root, SPEC, digest, own, "a"),
                  _plant_staging(alice, root, SPEC, digest, climbing, "b")]
        history = ProductionRepo(settings).history_entries(parse_spec(SPEC))
        install_package(settings, tmp_path, seed=2)
        publish(parse_spec(SPEC), settings, force=True)  # takes the lock: cleans staging first
        assert not any(os.path.lexists(p) for p in plants)
        after = os.stat(outside)
        assert (after.st_uid, after.st_mode, sorted(os.listdir(outside))) == (before.st_uid, before.st_mode, [])
        entries = ProductionRepo(settings).history_entries(parse_spec(SPEC))
        assert len(entries) == len(history) + 1 and all(os.lstat(e).st_uid == 0 for e in entries)
        records, _ = ProductionRepo(settings).audit.read()
        assert "recover" not in [r["action"] for r in records]


def test_root_rollback_never_resolves_through_a_member_owned_symlink(repo: tuple[Path, str, int],
                                                                      shared_base: Path, tmp_path: Path) -> None:
    """alice owns namespace evil/, swaps it for a symlink to a root-only directory and plants a
    history copy for evil/etc@target; root's rollback and unpublish refuse to go through it."""
    root, gname, _ = repo
    outside = tmp_path / "outside"
    (outside / "etc" / "target").mkdir(parents=True)
    (outside / "etc" / "target" / "keep").write_text("root's\n")
    with temp_user([gname]) as alice:
        env = prepare_user(shared_base, alice, root, gname, tmp_path)
        install_package(Settings.from_env(env), tmp_path, spec="evil/x@1")
        subprocess.run(["chown", "-R", f"{alice.uid}:{alice.gid}", str(shared_base / alice.name)], check=True)
        assert run_cli_as(alice, ["publish", "evil/x@1"], env).code == 0
        cached = Path(env["AXON_CACHE_DIR"]) / "evil" / "x" / "1"

        def swap_and_plant() -> None:
            os.rename(root / "evil", root / "evil.d")
            os.symlink(outside, root / "evil")
            hist = root / ".axon" / "history" / "evil~etc@target"
            os.mkdir(hist)
            subprocess.run(["cp", "-r", str(cached), str(hist / "29990101T000000.000000-x")], check=True)

        assert run_as(alice, swap_and_plant) == "ok"
        settings = _root_settings(tmp_path, root)
        with pytest.raises(AxonError, match="is a symlink; refusing to publish through it"):
            rollback(parse_spec("evil/etc@target"), settings)
        from axon.publish import unpublish

        for purge in (False, True):
            with pytest.raises(AxonError, match="is a symlink; refusing to publish through it"):
                unpublish(parse_spec("evil/etc@target"), settings, purge=purge)
        assert sorted(os.listdir(outside / "etc" / "target")) == ["keep"]
        assert os.stat(outside / "etc" / "target").st_uid == 0


def test_root_never_changes_a_file_hard_linked_into_a_members_version(repo: tuple[Path, str, int],
                                                                       shared_base: Path, tmp_path: Path) -> None:
    root, gname, _ = repo
    with temp_user([gname]) as alice, temp_user() as carol:
        shared = shared_base / "carols-shared-file"
        shared.write_text("carol's, writable by everyone\n")
        os.chown(shared, carol.uid, carol.gid)
        os.chmod(shared, 0o666)
        env = prepare_user(shared_base, alice, root, gname, tmp_path)
        assert run_cli_as(alice, ["publish", SPEC], env).code == 0
        version = root / "acme" / "ranker" / "1.0.0"

        def link_in() -> None:
            os.chmod(version, 0o755)
            os.link(shared, version / "linked")

        assert run_as(alice, link_in) == "ok"
        from axon.publish import unpublish

        with pytest.raises(OSError, match="other hard links"):
            unpublish(parse_spec(SPEC), _root_settings(tmp_path, root))
        st = os.stat(shared)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (carol.uid, 0o666)


def test_replayed_audit_record_is_not_attested(repo: tuple[Path, str, int], shared_base: Path,
                                               tmp_path: Path) -> None:
    root, gname, _ = repo
    settings = _root_settings(tmp_path, root)
    install_package(settings, tmp_path)
    publish(parse_spec(SPEC), settings)
    line = (root / ".axon" / "audit.log").read_text().splitlines()[0]
    with temp_user([gname]) as alice:
        def replay() -> None:
            with open(root / ".axon" / "audit.log", "a") as f:
                f.write(line + "\n")

        assert run_as(alice, replay) == "ok"
    records, problems = ProductionRepo(settings).audit.read()
    assert [r["attested"] for r in records] == [True, False]
    assert any("replayed" in p for p in problems)


def test_version_keys_are_injective() -> None:
    from axon.store.layout import version_key

    specs = ["a/b--c@1", "a--b/c@1", "a/b/c@1", "a/b@c--1", "a/b-@-c"]
    keys = {version_key(parse_spec(s)) for s in specs if _valid(s)}
    assert len(keys) == len([s for s in specs if _valid(s)])


def _valid(spec: str) -> bool:
    try:
        parse_spec(spec)
    except AxonError:
        return False
    return True


def test_fifo_planted_in_staging_does_not_hang_root(repo: tuple[Path, str, int], tmp_path: Path) -> None:
    root, gname, _ = repo
    settings = _root_settings(tmp_path, root)
    set_config_value(settings.config_file, "publish_group", gname)
    install_package(settings, tmp_path)
    with temp_user([gname]) as alice:
        planted = root / ".axon" / "staging" / f"acme~ranker@1.0.0.999999.x{'0' * 32}.fifo"

        def plant() -> None:
            planted.mkdir()
            os.mkfifo(planted / "manifest.yaml")

        assert run_as(alice, plant) == "ok"
        env = {**os.environ, "HOME": str(settings.home.parent), "AXON_HOME": str(settings.home),
               "AXON_CACHE_DIR": str(settings.cache_dir), "AXON_PUBLISH_DIR": str(root)}
        proc = subprocess.run([sys.executable, "-m", "axon", "publish", SPEC, "-q"], env=env, timeout=120,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert not planted.exists()


# --- root publishing a dev cache its unprivileged owner controls ---------------------------------


def _swapper(user: User, cache_version: Path, secret: Path, other_manifest: str, seconds: float) -> int:
    """Fork a child as *user* that keeps swapping tokenizer/vocab.txt between its real content and a
    symlink to *secret*, and manifest.yaml between its own and another valid one (same spec, other
    hashes); returns the pid."""
    vocab = cache_version / "tokenizer" / "vocab.txt"
    manifest = cache_version / "manifest.yaml"
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        work = cache_version.parents[3] / f"swapper-{cache_version.name}"  # beside the cache, not in the version
        work.mkdir(exist_ok=True)
        real = work / "real"
        os.link(vocab, real)
        own_manifest = work / "m1"
        os.link(manifest, own_manifest)
        other = work / "m2"
        other.write_text(other_manifest)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for src in (None, real):
                tmp = work / "swap"
                if src is None:
                    os.symlink(secret, tmp)
                else:
                    os.link(src, tmp)
                os.replace(tmp, vocab)
            for src in (other, own_manifest):
                tmp = work / "mswap"
                os.link(src, tmp)
                os.replace(tmp, manifest)
        code = 0
    finally:
        os._exit(code)


def test_root_publish_never_follows_a_swapped_symlink_out_of_the_cache(repo: tuple[Path, str, int],
                                                                         shared_base: Path, tmp_path: Path) -> None:
    root, gname, _ = repo
    secret = tmp_path / "root-only-secret"
    secret.write_bytes(b"root's secret: " + os.urandom(32))
    os.chmod(secret, 0o600)
    secret_digests = {hashlib.sha256(secret.read_bytes()).hexdigest()}
    with temp_user([gname]) as alice:
        env = user_env(shared_base, alice.name, root)
        alice_settings = Settings.from_env(env)
        versions = [f"acme/ranker@1.0.{i}" for i in range(12)]
        scratch = _root_settings(tmp_path / "scratch", root)
        others = {}
        for spec in versions:
            install_package(alice_settings, tmp_path, spec=spec)
            install_package(scratch, tmp_path, seed=1, spec=spec)
            others[spec] = (scratch.cache_dir.joinpath(*parse_spec(spec).parts) / "manifest.yaml").read_text()
        subprocess.run(["chown", "-R", f"{alice.uid}:{alice.gid}", str(shared_base / alice.name)], check=True)
        settings = _root_settings(tmp_path, root, cache=alice_settings.cache_dir)
        set_config_value(settings.config_file, "publish_group", gname)
        errors: list[str] = []
        for spec in versions:
            cached = alice_settings.cache_dir.joinpath(*parse_spec(spec).parts)
            pid = _swapper(alice, cached, secret, others[spec], 0.6)
            try:
                publish(parse_spec(spec), settings)
            except AxonError as exc:
                errors.append(f"{exc} {exc.hint or ''}")
            finally:
                assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the swapper failed"
        # Every published version is complete and verifies; none holds the secret; no message leaks it.
        visible_versions_verify(settings)
        for path in root.rglob("*"):
            if path.is_file() and ".axon" not in path.parts:
                assert hashlib.sha256(path.read_bytes()).hexdigest() not in secret_digests, path
        xxh = __import__("xxhash").xxh3_128(secret.read_bytes()).hexdigest()
        audit = (root / ".axon" / "audit.log").read_text()
        for text in [*errors, audit]:
            assert secret.read_bytes().decode(errors="replace") not in text
            assert not any(d in text for d in secret_digests) and xxh not in text


def test_root_never_publishes_a_cache_reached_through_a_symlink(repo: tuple[Path, str, int], tmp_path: Path) -> None:
    """A user points their dev cache at somebody else's (a symlink): root's publish refuses it."""
    root, _, _ = repo
    carol = _root_settings(tmp_path / "carol", root)
    install_package(carol, tmp_path)
    alice_cache = tmp_path / "alice-cache"
    alice_cache.symlink_to(carol.cache_dir)
    settings = _root_settings(tmp_path, root, cache=alice_cache)
    with pytest.raises(IntegrityError, match="is a symlink; refusing to publish from it"):
        publish(parse_spec(SPEC), settings)
    assert visible_versions_verify(settings) == []


# --- publish --force killed at every step ------------------------------------------------------


@pytest.mark.parametrize("point", ["publish:before-rename", "publish:after-exchange", "publish:after-history"])
def test_force_killed_at_every_step_loses_no_copy(repo: tuple[Path, str, int], tmp_path: Path, point: str) -> None:
    root, gname, _ = repo
    settings = _root_settings(tmp_path, root)
    set_config_value(settings.config_file, "publish_group", gname)
    env = {**os.environ, "HOME": str(settings.home.parent), "AXON_HOME": str(settings.home),
           "AXON_CACHE_DIR": str(settings.cache_dir), "AXON_PUBLISH_DIR": str(root)}
    first = install_package(settings, tmp_path, seed=1)
    publish(parse_spec(SPEC), settings)
    second = install_package(settings, tmp_path, seed=2)
    proc = subprocess.run([sys.executable, "-m", "axon", "publish", SPEC, "--force", "-q"],
                          env={**env, "AXON_CRASH_AT": point}, capture_output=True, check=False)
    assert proc.returncode == -9, proc.stderr  # killed at that instant
    visible = visible_versions_verify(settings)
    assert visible in ([first], [second])
    # The next command (any that takes the version's lock) finishes what the killed one left:
    # both copies exist, one published and one in history, and rollback toggles between them.
    subprocess.run([sys.executable, "-m", "axon", "publish", SPEC, "--force", "-q"], env=env, check=True)
    assert visible_versions_verify(settings) == [second]
    r = subprocess.run([sys.executable, "-m", "axon", "rollback", SPEC, "--json"], env=env, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["digest"] == first
    assert visible_versions_verify(settings) == [first]
    assert list(StoreLayout(root).staging.iterdir()) == []


def test_swapped_out_copy_left_in_staging_is_recovered_into_history(repo: tuple[Path, str, int],
                                                                      tmp_path: Path) -> None:
    """Kill right after the exchange: the replaced copy sits in staging under a name that says so."""
    root, gname, _ = repo
    settings = _root_settings(tmp_path, root)
    set_config_value(settings.config_file, "publish_group", gname)
    env = {**os.environ, "HOME": str(settings.home.parent), "AXON_HOME": str(settings.home),
           "AXON_CACHE_DIR": str(settings.cache_dir), "AXON_PUBLISH_DIR": str(root),
           "AXON_CRASH_AT": "publish:after-exchange"}
    first = install_package(settings, tmp_path, seed=1)
    publish(parse_spec(SPEC), settings)
    install_package(settings, tmp_path, seed=2)
    subprocess.run([sys.executable, "-m", "axon", "publish", SPEC, "--force", "-q"], env=env, check=False)
    [left] = list(StoreLayout(root).staging.iterdir())
    assert f".x{first}." in left.name
    result = rollback(parse_spec(SPEC), settings)  # cleans up first: the copy goes to history, then back
    assert result.digest == first
    records, _ = ProductionRepo(settings).audit.read(SPEC)
    assert [r["action"] for r in records][-2:] == ["recover", "rollback"]


def test_concurrent_swapper_thread_safety_of_verify(tmp_path: Path) -> None:
    """verify never follows a symlink swapped in while it hashes (no digest of the target reported)."""
    from axon.install import install
    from axon.store.integrity import verify_version_dir

    settings = Settings.from_env({"HOME": str(tmp_path), "AXON_HOME": str(tmp_path / ".axon"),
                                  "AXON_CACHE_DIR": str(tmp_path / "cache"), "AXON_PUBLISH_DIR": str(tmp_path / "p")})
    src = tmp_path / "src"
    from tests.support.onnx_models import write_mlp

    write_mlp(src / "model.onnx")
    (src / "big.bin").write_bytes(os.urandom(4 << 20))
    result = install(parse_spec(SPEC), settings, from_=str(src))
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(os.urandom(4 << 20))
    target_digest = hashlib.sha256(target.read_bytes()).hexdigest()
    big = result.path / "big.bin"
    real = result.path / ".real"
    os.link(big, real)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.symlink(target, result.path / ".s")
            os.replace(result.path / ".s", big)
            os.link(real, result.path / ".h")
            os.replace(result.path / ".h", big)

    t = threading.Thread(target=swap)
    t.start()
    try:
        for _ in range(30):
            report = verify_version_dir(result.path, result.manifest)
            for p in report.problems:
                assert target_digest not in p.describe() and target_digest != p.actual
                assert p.path != "big.bin" or p.kind in ("not-a-file", "unexpected")
    finally:
        stop.set()
        t.join()


def test_a_force_publish_whose_exchange_fails_leaves_no_copy_in_staging(repo: tuple[Path, str, int],
                                                                        tmp_path: Path) -> None:
    """The new copy stays in staging only when the exchange made it the replaced copy; when the
    exchange itself fails it is the new copy, and it goes at once (a long-lived process that
    publishes again and again would otherwise pile whole models up in .axon/staging)."""
    root, _, _ = repo
    settings = _root_settings(tmp_path, root)
    install_package(settings, tmp_path, seed=1)
    first = publish(parse_spec(SPEC), settings).digest
    install_package(settings, tmp_path, seed=2)
    target = StoreLayout(root).version_dir(parse_spec(SPEC))

    def pin_the_target(staging: Path) -> None:  # immutable: renameat2(RENAME_EXCHANGE) fails with EPERM
        if subprocess.run(["chattr", "+i", str(target)], capture_output=True, check=False).returncode != 0:
            pytest.skip("chattr +i is not available on this file system")

    try:
        with pytest.raises(PermissionError):
            publish(parse_spec(SPEC), settings, force=True, before_rename=pin_the_target)
    finally:
        subprocess.run(["chattr", "-i", str(target)], capture_output=True, check=False)
    assert list(StoreLayout(root).staging.iterdir()) == []
    assert visible_versions_verify(settings) == [first]
