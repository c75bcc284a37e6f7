"""An s3:// production repository end to end, against a real S3 server (moto in server mode):
publish, --force, races, audit, published, verify --published, set-up, through the library and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from axon.errors import AlreadyInstalledError, AxonError, ConflictError, IntegrityError, StoreError
from axon.object_repository import ObjectRepository
from axon.publish import audit_records, publish, published, rollback, unpublish, verify_published
from axon.settings import Settings
from axon.store.manifest import load_manifest
from axon.store.spec import parse_spec
from tests.support.publishing import SPEC, install_package
from tests.support.s3_server import s3_client


def repo_of(settings: Settings) -> ObjectRepository:
    return ObjectRepository.of(settings)


def test_a_repository_must_be_set_up_first(s3_settings: Settings, tmp_path: Path) -> None:
    install_package(s3_settings, tmp_path, seed=1)
    with pytest.raises(StoreError, match="not set up") as info:
        publish(parse_spec(SPEC), s3_settings)
    assert info.value.hint and "setup-production --dir s3://" in info.value.hint
    info_setup = repo_of(s3_settings).setup()
    assert info_setup["created"] is True and repo_of(s3_settings).setup()["created"] is False


def test_publish_force_and_what_readers_see(s3_settings: Settings, tmp_path: Path, s3_endpoint: str) -> None:
    repo = repo_of(s3_settings)
    repo.setup()
    spec = parse_spec(SPEC)
    first = install_package(s3_settings, tmp_path, seed=1)
    result = publish(spec, s3_settings)
    assert (result.status, result.digest) == ("published", first)
    keys = set(repo.store.list_keys(spec.relpath))
    assert f"{spec.relpath}/manifest.yaml" in keys and f"{spec.relpath}/{first}/model.onnx" in keys
    assert publish(spec, s3_settings).status == "unchanged"
    second = install_package(s3_settings, tmp_path, seed=2)
    with pytest.raises(AlreadyInstalledError, match="already published"):
        publish(spec, s3_settings)
    replaced = publish(spec, s3_settings, force=True)
    assert (replaced.status, replaced.digest, replaced.digest_old) == ("replaced", second, first)
    keys = set(repo.store.list_keys(""))
    assert f"{spec.relpath}/{first}/model.onnx" in keys  # the replaced generation stays, for rollback
    assert any(k.startswith(".axon/history/") and k.endswith(f"-{first}.yaml") for k in keys)
    [row] = published(s3_settings)
    assert (row["spec"], row["digest"], row["valid"]) == (SPEC, second, True) and row["publisher"]
    assert verify_published(spec, s3_settings).ok
    records, problems = audit_records(s3_settings, spec)
    assert [r["result"] for r in records] == ["ok", "replaced"] and not problems
    assert records[1]["digest_old"] == first and records[1]["digest_new"] == second


def test_a_tampered_object_fails_verification(s3_settings: Settings, tmp_path: Path, s3_endpoint: str) -> None:
    repo = repo_of(s3_settings)
    repo.setup()
    spec = parse_spec(SPEC)
    digest = install_package(s3_settings, tmp_path, seed=3)
    publish(spec, s3_settings)
    loc = s3_settings.publish_store
    assert loc is not None
    s3_client(s3_endpoint).put_object(Bucket=loc.bucket, Key=loc.key(f"{spec.relpath}/{digest}/tokenizer/vocab.txt"),
                                   Body=b"[PAD]\n[UNK]\nhellX3\n")  # same size, other bytes
    report = verify_published(spec, s3_settings)
    assert [p.kind for p in report.problems] == ["xxh3_128"]
    with pytest.raises(IntegrityError, match=r"published copy .* is damaged"):
        report.raise_for_problems()


def test_a_damaged_cached_file_publishes_nothing(s3_settings: Settings, tmp_path: Path) -> None:
    repo_of(s3_settings).setup()
    spec = parse_spec(SPEC)
    install_package(s3_settings, tmp_path, seed=4)
    vocab = s3_settings.cache_dir / spec.relpath / "tokenizer" / "vocab.txt"
    os.chmod(vocab, 0o644)
    vocab.write_bytes(vocab.read_bytes().replace(b"hello4", b"hellX4"))  # same size, other bytes
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        publish(spec, s3_settings)
    assert published(s3_settings) == []  # data objects may be there; without a manifest nobody sees them
    assert [r["result"] for r in audit_records(s3_settings, spec)[0]] == ["failed"]
    repo = repo_of(s3_settings)
    manifest = load_manifest(s3_settings.cache_dir / spec.relpath / "manifest.yaml")
    assert repo.store.get_size(repo.data_key(spec, manifest.digest, "tokenizer/vocab.txt")) is None  # not left there
    vocab.write_bytes(vocab.read_bytes().replace(b"hellX4", b"hello4"))  # repaired: the next publish goes through
    assert publish(spec, s3_settings).status == "published"


def test_eight_racing_first_publishers_get_one_winner(s3_settings: Settings, tmp_path: Path) -> None:
    repo_of(s3_settings).setup()
    spec = parse_spec(SPEC)
    contenders = []
    for seed in range(8):
        cache = tmp_path / f"cache-{seed}"
        mine = dataclasses.replace(s3_settings, cache_dir=cache)
        install_package(mine, tmp_path / f"src-{seed}", seed=10 + seed)
        contenders.append(mine)
    outcomes: list[str] = []
    start = threading.Barrier(len(contenders))

    def race(settings: Settings) -> None:
        start.wait()
        try:
            outcomes.append(publish(spec, settings).status)
        except (ConflictError, AlreadyInstalledError) as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=race, args=(s,)) for s in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("published") == 1, outcomes
    assert len(outcomes) == len(contenders)
    [row] = published(s3_settings)
    assert verify_published(spec, s3_settings).ok and row["valid"]


def test_rollback_and_unpublish(s3_settings: Settings, tmp_path: Path) -> None:
    repo_of(s3_settings).setup()
    spec = parse_spec(SPEC)
    with pytest.raises(AxonError, match="no replaced or unpublished copy"):
        rollback(spec, s3_settings)
    first = install_package(s3_settings, tmp_path, seed=6)
    publish(spec, s3_settings)
    second = install_package(s3_settings, tmp_path, seed=7)
    publish(spec, s3_settings, force=True)
    back = rollback(spec, s3_settings)
    assert (back.status, back.digest, back.digest_old) == ("rolled-back", first, second)
    assert [r["digest"] for r in published(s3_settings)] == [first] and verify_published(spec, s3_settings).ok
    assert rollback(spec, s3_settings).digest == second  # twice toggles, like a local repository
    gone = unpublish(spec, s3_settings)
    assert gone["status"] == "unpublished" and published(s3_settings) == []
    assert rollback(spec, s3_settings).digest == second  # an unpublished version comes back
    assert unpublish(spec, s3_settings, purge=True)["status"] == "purged"
    assert published(s3_settings) == [] and list(repo_of(s3_settings).store.list_keys(spec.relpath)) == []
    assert repo_of(s3_settings).history_entries(spec) == []
    actions = [r["action"] for r in audit_records(s3_settings, spec)[0]]
    assert actions == ["publish", "publish", "rollback", "rollback", "unpublish", "rollback", "purge"]


def test_a_rollback_to_a_copy_whose_objects_are_gone_changes_nothing(s3_settings: Settings, tmp_path: Path) -> None:
    repo = repo_of(s3_settings)
    repo.setup()
    spec = parse_spec(SPEC)
    first = install_package(s3_settings, tmp_path, seed=8)
    publish(spec, s3_settings)
    second = install_package(s3_settings, tmp_path, seed=9)
    publish(spec, s3_settings, force=True)
    repo.store.delete(repo.data_key(spec, first, "model.onnx"))
    with pytest.raises(IntegrityError, match=r"missing 'model\.onnx'"):
        rollback(spec, s3_settings)
    assert [r["digest"] for r in published(s3_settings)] == [second]


def test_the_cli_on_an_s3_repository(s3_settings: Settings, tmp_path: Path, axon_cli: object) -> None:
    run = axon_cli  # type: ignore[assignment]
    assert str(s3_settings.publish_store).startswith("s3://")
    r = run("setup-production", "--json")  # type: ignore[operator]
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["conditional_writes"] == "enforced"
    digest = install_package(s3_settings, tmp_path, seed=5)
    r = run("publish", SPEC, "--json")  # type: ignore[operator]
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "published"
    r = run("published", "--json")  # type: ignore[operator]
    assert [v["digest"] for v in json.loads(r.stdout)] == [digest], r.stdout
    r = run("verify", "--published", SPEC)  # type: ignore[operator]
    assert r.code == 0 and "OK" in r.stdout, r.stderr
    r = run("audit", SPEC, "--json")  # type: ignore[operator]
    assert [x["action"] for x in json.loads(r.stdout)["records"]] == ["publish"]
    r = run("config", "get", "publish_dir")  # type: ignore[operator]
    assert r.stdout.strip() == str(s3_settings.publish_store)


@pytest.mark.parametrize("point", ["s3-publish:after-one-file", "s3-publish:after-data", "s3-publish:after-history",
                                   "s3-publish:after-manifest"])
def test_a_publish_killed_at_any_step_leaves_only_whole_versions(s3_settings: Settings, tmp_path: Path,
                                                                axon_cli: object, point: str) -> None:
    """SIGKILL at each step of a --force publish: readers see the old version or the new one,
    whole (every visible version verifies), and the next publish completes."""
    run = axon_cli  # type: ignore[assignment]
    repo_of(s3_settings).setup()
    spec = parse_spec(SPEC)
    first = install_package(s3_settings, tmp_path, seed=20)
    publish(spec, s3_settings)
    second = install_package(s3_settings, tmp_path, seed=21, big=1)  # a multipart-sized file too
    r = run("publish", SPEC, "--force", env={"AXON_CRASH_AT": point})  # type: ignore[operator]
    assert r.code == -9, (r.code, r.stderr)
    [row] = published(s3_settings)
    assert row["digest"] == (second if point == "s3-publish:after-manifest" else first)
    assert verify_published(spec, s3_settings).ok
    result = publish(spec, s3_settings, force=True)
    assert result.digest == second and verify_published(spec, s3_settings).ok


def test_a_planted_data_object_stops_the_publish(s3_settings: Settings, tmp_path: Path, s3_endpoint: str) -> None:
    """Someone with write access creates the object a coming publish will name, with other bytes:
    the publish notices (it checks what is already there) and commits nothing."""
    repo = repo_of(s3_settings)
    repo.setup()
    spec = parse_spec(SPEC)
    digest = install_package(s3_settings, tmp_path, seed=30)
    repo.store.put_if_absent(repo.data_key(spec, digest, "tokenizer/vocab.txt"), b"[PAD]\n[UNK]\nhellX30\n")
    with pytest.raises(IntegrityError, match=r"already at .* does not match"):
        publish(spec, s3_settings)
    assert published(s3_settings) == []


def test_a_purge_keeps_a_spec_whose_path_continues_it(s3_settings: Settings, tmp_path: Path) -> None:
    """``acme/x@y`` lives at acme/x/y and ``acme/x/y@z`` at acme/x/y/z: purging the first must not
    take the second's objects."""
    repo_of(s3_settings).setup()
    short, longer = parse_spec("acme/x@y"), parse_spec("acme/x/y@z")
    install_package(s3_settings, tmp_path, seed=40, spec=str(short))
    publish(short, s3_settings)
    install_package(s3_settings, tmp_path / "other", seed=41, spec=str(longer))
    publish(longer, s3_settings)
    unpublish(short, s3_settings, purge=True)
    assert [r["spec"] for r in published(s3_settings)] == [str(longer)]
    assert verify_published(longer, s3_settings).ok
