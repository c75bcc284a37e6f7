"""Promotion to production: permissions, modes, atomicity under SIGKILL, disk full, history."""

from __future__ import annotations

import grp
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from axon.cache import get_installed
from axon.errors import IntegrityError
from axon.install import install
from axon.production import setup_production
from axon.publish import ProductionRepo, publish
from axon.settings import Settings, set_config_value
from axon.store.layout import StoreLayout
from axon.store.spec import parse_spec
from tests.support.mounts import tmpfs
from tests.support.onnx_models import write_mlp
from tests.support.publishing import SPEC, install_package, prepare_user, visible_versions_verify
from tests.support.users import run_cli_as, temp_group, temp_user

_install = install_package
_visible_versions_verify = visible_versions_verify
_prepare_user = prepare_user


def _settings(env: dict[str, str], **over: str) -> Settings:
    return Settings.from_env({**env, **over})


@pytest.fixture
def prod(tmp_path: Path, isolated_env: dict[str, str]) -> Iterator[tuple[Settings, str]]:
    """A production root set up as an administrator would; (settings, group name)."""
    root = Path(isolated_env["AXON_PUBLISH_DIR"])
    settings = _settings(isolated_env)
    if os.geteuid() == 0:
        with temp_group() as (gname, _gid):
            setup_production(root, gname)
            set_config_value(settings.config_file, "publish_group", gname)
            try:
                yield _settings(isolated_env), gname
            finally:
                subprocess.run(["chattr", "-a", str(root / ".axon" / "audit.log")], check=False, capture_output=True)
    else:
        gname = grp.getgrgid(os.getegid()).gr_name
        root.mkdir(parents=True)
        set_config_value(settings.config_file, "publish_group", gname)
        yield _settings(isolated_env), gname


def test_publish_modes_group_and_audit(prod: tuple[Settings, str], tmp_path: Path) -> None:
    settings, gname = prod
    digest = _install(settings, tmp_path)
    r = publish(parse_spec(SPEC), settings)
    assert r.status == "published" and r.digest == digest
    vdir = settings.publish_dir / "acme" / "ranker" / "1.0.0"
    assert r.path == vdir
    gid = grp.getgrnam(gname).gr_gid
    for p in [vdir, vdir / "tokenizer", vdir / "model.onnx", vdir / "tokenizer" / "vocab.txt", vdir / "manifest.yaml"]:
        st = p.stat()
        if os.geteuid() == 0:
            assert st.st_gid == gid, p
        if p.is_dir():
            assert stat.S_IMODE(st.st_mode) == 0o2555, p
        else:
            assert stat.S_IMODE(st.st_mode) == 0o444, p
    assert stat.S_IMODE((settings.publish_dir / "acme" / "ranker").stat().st_mode) == 0o3775  # sticky
    assert _visible_versions_verify(settings) == [digest]
    assert publish(parse_spec(SPEC), settings).status == "unchanged"
    records, problems = ProductionRepo(settings).audit.read(SPEC)
    assert [(r["action"], r["result"]) for r in records] == [("publish", "ok"), ("publish", "unchanged")]
    assert records[0]["digest_new"] == digest and records[0]["user"] and "host" in records[0] and not problems
    assert list(StoreLayout(settings.publish_dir).staging.iterdir()) == []


def test_different_content_needs_force_then_rollback_round_trip(prod: tuple[Settings, str], tmp_path: Path,
                                                                axon_cli: object) -> None:
    settings, _ = prod
    first = _install(settings, tmp_path, seed=1)
    publish(parse_spec(SPEC), settings)
    second = _install(settings, tmp_path, seed=2)
    r = axon_cli("publish", SPEC)  # type: ignore[operator]
    assert r.code == 1 and "already published with different content" in r.stderr and "--force" in r.stderr
    r = axon_cli("publish", SPEC, "--force", "--json")  # type: ignore[operator]
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "replaced"
    assert _visible_versions_verify(settings) == [second]
    r = axon_cli("rollback", SPEC)  # type: ignore[operator]
    assert r.code == 0, r.stderr
    assert _visible_versions_verify(settings) == [first]
    r = axon_cli("audit", SPEC, "--json")  # type: ignore[operator]
    steps = [(x["action"], x["result"], x.get("digest_old"), x.get("digest_new"))
             for x in json.loads(r.stdout)["records"]]
    assert steps == [("publish", "ok", None, first), ("publish", "replaced", first, second),
                     ("rollback", "ok", second, first)]
    r = axon_cli("rollback", SPEC)  # type: ignore[operator]  # toggles back to the replaced copy
    assert r.code == 0 and _visible_versions_verify(settings) == [second]


def test_unpublish_rollback_and_purge(prod: tuple[Settings, str], tmp_path: Path, axon_cli: object) -> None:
    settings, _ = prod
    digest = _install(settings, tmp_path)
    publish(parse_spec(SPEC), settings)
    assert axon_cli("unpublish", SPEC).code == 0  # type: ignore[operator]
    assert _visible_versions_verify(settings) == []
    assert axon_cli("rollback", SPEC).code == 0  # type: ignore[operator]
    assert _visible_versions_verify(settings) == [digest]
    r = axon_cli("unpublish", SPEC, "--purge")  # type: ignore[operator]  # no terminal: refuses
    assert r.code == 2 and "--yes" in r.stderr
    assert axon_cli("unpublish", SPEC, "--purge", "--yes").code == 0  # type: ignore[operator]
    assert _visible_versions_verify(settings) == []
    r = axon_cli("rollback", SPEC)  # type: ignore[operator]
    assert r.code == 1 and "no replaced or unpublished copy" in r.stderr


def test_published_listing_and_dry_run(prod: tuple[Settings, str], tmp_path: Path, axon_cli: object) -> None:
    settings, _ = prod
    digest = _install(settings, tmp_path)
    r = axon_cli("publish", SPEC, "--dry-run", "--json")  # type: ignore[operator]
    assert r.code == 0 and json.loads(r.stdout)["status"] == "dry-run"
    assert _visible_versions_verify(settings) == []
    assert axon_cli("publish", SPEC).code == 0  # type: ignore[operator]
    rows = json.loads(axon_cli("published", "--json").stdout)  # type: ignore[operator]
    assert [(x["spec"], x["digest"], x["valid"]) for x in rows] == [(SPEC, digest, True)]
    assert rows[0]["publisher"] and rows[0]["published"]


def test_corrupted_cache_refused_and_corrupted_publication_detected(prod: tuple[Settings, str], tmp_path: Path,
                                                                    axon_cli: object) -> None:
    settings, _ = prod
    _install(settings, tmp_path)
    cached = get_installed(settings.cache_dir, parse_spec(SPEC)).path / "tokenizer" / "vocab.txt"
    good = cached.read_bytes()
    cached.write_bytes(b"X" + good[1:])
    r = axon_cli("publish", SPEC)  # type: ignore[operator]
    assert r.code == 3 and "Integrity check failed" in r.stderr
    assert _visible_versions_verify(settings) == []
    cached.write_bytes(good)
    assert axon_cli("publish", SPEC).code == 0  # type: ignore[operator]
    published = settings.publish_dir / "acme" / "ranker" / "1.0.0" / "tokenizer" / "vocab.txt"
    os.chmod(published.parent, 0o755)
    os.chmod(published, 0o644)
    published.write_bytes(b"Y" + good[1:])
    r = axon_cli("verify", "--published", SPEC)  # type: ignore[operator]
    assert r.code == 3 and "published copy" in r.stderr and "vocab.txt" in r.stderr


def test_symlink_in_cached_model_is_refused(prod: tuple[Settings, str], tmp_path: Path) -> None:
    settings, _ = prod
    _install(settings, tmp_path)
    vocab = get_installed(settings.cache_dir, parse_spec(SPEC)).path / "tokenizer" / "vocab.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    vocab.unlink()
    vocab.symlink_to(secret)
    with pytest.raises(IntegrityError, match="is a symlink"):
        publish(parse_spec(SPEC), settings)
    vocab.unlink()
    vocab.symlink_to(vocab.parent.parent / "model.onnx")  # even one pointing inside is not a package file
    with pytest.raises(IntegrityError, match="symlink"):
        publish(parse_spec(SPEC), settings)
    assert _visible_versions_verify(settings) == []


def test_disk_full_during_the_copy(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    with tmpfs(tmp_path / "tinyprod", "8m") as root, temp_group() as (gname, _):
        setup_production(root, gname)
        settings = _settings(isolated_env, AXON_PUBLISH_DIR=str(root))
        set_config_value(settings.config_file, "publish_group", gname)
        settings = _settings(isolated_env, AXON_PUBLISH_DIR=str(root))
        src = tmp_path / "pkg"
        write_mlp(src / "model.onnx")
        (src / "big.bin").write_bytes(os.urandom(12 << 20))
        install(parse_spec(SPEC), settings, from_=str(src))
        from axon.errors import AxonError

        with pytest.raises((OSError, AxonError)) as info:
            publish(parse_spec(SPEC), settings)
        assert "No space left" in str(info.value) or "Disk full" in str(info.value)
        assert _visible_versions_verify(settings) == []
        assert list(StoreLayout(root).staging.iterdir()) == []
        records, _ = ProductionRepo(settings).audit.read(SPEC)
        assert records[-1]["result"] == "failed"


def test_eight_concurrent_publishers(prod: tuple[Settings, str], tmp_path: Path) -> None:
    settings, _ = prod
    digest = _install(settings, tmp_path, big=1)
    procs = [subprocess.Popen([sys.executable, "-m", "axon", "publish", SPEC, "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1] for o in outs]
    statuses = sorted(json.loads(o[0])["status"] for o in outs)
    assert statuses == ["published"] + ["unchanged"] * 7
    assert _visible_versions_verify(settings) == [digest]
    assert list(StoreLayout(settings.publish_dir).staging.iterdir()) == []


def test_sigkill_at_many_moments_never_exposes_a_partial_version(prod: tuple[Settings, str], tmp_path: Path) -> None:
    settings, _ = prod
    variants = [tmp_path / "a", tmp_path / "b"]
    for i, d in enumerate(variants):
        write_mlp(d / "model.onnx", seed=i)
        for j in range(2):
            (d / f"weights-{j}.bin").write_bytes(os.urandom(96 << 20))
        for j in range(40):
            (d / "extra" / f"{j}.json").parent.mkdir(parents=True, exist_ok=True)
            (d / "extra" / f"{j}.json").write_text(json.dumps({"variant": i, "j": j}))
    digests = {install(parse_spec(SPEC), settings, from_=str(d), force=True).manifest.digest for d in variants[::-1]}
    cmd = [sys.executable, "-m", "axon", "publish", SPEC, "--force", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ))
    full = time.perf_counter() - t0
    points = 24
    for i in range(points):
        install(parse_spec(SPEC), settings, from_=str(variants[i % 2]), force=True)
        proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * (i + 0.5) / points)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        visible = _visible_versions_verify(settings)
        assert len(visible) == 1 and visible[0] in digests, f"after kill {i}"
    # A following publish succeeds and cleans up what the killed ones left in staging.
    assert subprocess.run(cmd, env=dict(os.environ), check=False).returncode == 0
    assert _visible_versions_verify(settings) == [get_installed(settings.cache_dir, parse_spec(SPEC)).manifest.digest]
    assert list(StoreLayout(settings.publish_dir).staging.iterdir()) == []


def test_torn_audit_line_is_tolerated(prod: tuple[Settings, str], tmp_path: Path, axon_cli: object) -> None:
    settings, _ = prod
    _install(settings, tmp_path)
    publish(parse_spec(SPEC), settings)
    log = settings.publish_dir / ".axon" / "audit.log"
    with open(log, "ab") as f:
        f.write(b'{"action": "publish", "spec": "acme/ran')  # a crash mid-write
    r = axon_cli("audit")  # type: ignore[operator]
    assert r.code == 0 and "torn last line" in r.stderr and SPEC in r.stdout


# --- real users and groups -------------------------------------------------------------------


def test_non_member_is_refused_and_nothing_changes(shared_base: Path, tmp_path: Path) -> None:
    with temp_group() as (gname, _), temp_user() as outsider:
        prod_root = shared_base / "prod"
        setup_production(prod_root, gname)
        env = _prepare_user(shared_base, outsider, prod_root, gname, tmp_path)
        before = sorted(str(p) for p in prod_root.rglob("*"))
        audit_before = (prod_root / ".axon" / "audit.log").read_bytes()
        r = run_cli_as(outsider, ["publish", SPEC], env)
        assert r.code == 4, (r.stdout, r.stderr)
        assert f"may not publish: publishing needs root or membership of group {gname!r}" in r.stderr
        assert f"usermod -aG {gname} {outsider.name}" in r.stderr
        assert sorted(str(p) for p in prod_root.rglob("*")) == before
        assert (prod_root / ".axon" / "audit.log").read_bytes() == audit_before


def test_member_publishes_and_cannot_modify_published_files(shared_base: Path, tmp_path: Path) -> None:
    with temp_group() as (gname, gid), temp_user([gname]) as member:
        prod_root = shared_base / "prod"
        setup_production(prod_root, gname)
        env = _prepare_user(shared_base, member, prod_root, gname, tmp_path)
        r = run_cli_as(member, ["publish", SPEC, "--json"], env)
        assert r.code == 0, r.stderr
        vdir = prod_root / "acme" / "ranker" / "1.0.0"
        for p in [vdir, *vdir.rglob("*")]:
            st = p.stat()
            assert st.st_gid == gid and st.st_uid == member.uid, p
            assert stat.S_IMODE(st.st_mode) == (0o2555 if p.is_dir() else 0o444), p
        script = (f"open({str(vdir / 'model.onnx')!r}, 'r+b')")
        code = run_cli_as(member, ["--debug", "version"], env).code  # the user can run axon at all
        assert code == 0
        pid = os.fork()
        if pid == 0:
            os.setgroups(list(member.groups))
            os.setgid(member.gid)
            os.setuid(member.uid)
            try:
                eval(script)
                os._exit(0)
            except PermissionError:
                os._exit(13)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 13  # EACCES: published files are read-only
        records = [json.loads(x) for x in (prod_root / ".axon" / "audit.log").read_text().splitlines()]
        assert records[-1]["user"] == member.name and records[-1]["uid"] == member.uid
