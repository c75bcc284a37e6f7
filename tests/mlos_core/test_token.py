"""The admin token cannot be planted (issue #11, item 9): ``mlos-core serve`` refuses, with one line
saying how to fix it and a non-zero exit, a token file or directory that anyone but root or the
server's user could have written; the token it creates itself is readable only by root and the
repository's group. Real files and modes (the chown cases need root)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from axon.core_process import running_core
from tests.support.core_server import Core

OTHER_UID = 54_321  # nobody's; files given to it stand for "another user's"
OTHER_GID = 54_322
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def serve(repo: Path, token: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlos_core", "serve", "--repository", str(repo), "--port", "0",
                           "--device", "cpu", "--token-file", str(token), "--state-dir", str(repo / "state")],
                          capture_output=True, text=True, timeout=120, check=False)


def assert_refused(repo: Path, token: Path, *words: str) -> None:
    proc = serve(repo, token)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    message = proc.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, proc.stderr
    for word in words:
        assert word in message, (word, message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


def token_in(directory: Path, *, dir_mode: int = 0o750, file_mode: int = 0o640) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, dir_mode)
    token = directory / "token"
    token.write_text("s3cret-token\n")
    os.chmod(token, file_mode)
    return token


@pytest.mark.parametrize(("mode", "who"), [(0o660, "its group"), (0o642, "others"), (0o666, "its group and others")])
def test_a_writable_token_file_is_refused(repo: Path, tmp_path: Path, mode: int, who: str) -> None:
    token = token_in(tmp_path / "tok", file_mode=mode)
    assert_refused(repo, token, f"token file '{token}' is writable by {who}", f"chmod go-w {token}")


@needs_root
def test_a_token_file_owned_by_another_user_is_refused(repo: Path, tmp_path: Path) -> None:
    token = token_in(tmp_path / "tok")
    os.chown(token, OTHER_UID, -1)
    assert_refused(repo, token, f"token file '{token}' is owned by '{OTHER_UID}'", "chown root")


def test_a_symlinked_token_file_is_refused(repo: Path, tmp_path: Path) -> None:
    real = token_in(tmp_path / "tok")
    link = tmp_path / "tok" / "link"
    link.symlink_to(real)
    assert_refused(repo, link, f"token file '{link}' is a symlink", "regular file")


@pytest.mark.parametrize("mode", [0o770, 0o2775, 0o757])
def test_a_writable_token_directory_is_refused(repo: Path, tmp_path: Path, mode: int) -> None:
    token = token_in(tmp_path / "tok", dir_mode=mode)
    assert_refused(repo, token, f"token directory '{token.parent}' is writable by", f"chmod go-w {token.parent}")


def test_a_symlinked_token_directory_is_refused(repo: Path, tmp_path: Path) -> None:
    token_in(tmp_path / "tok")
    (tmp_path / "tok-link").symlink_to(tmp_path / "tok")
    assert_refused(repo, tmp_path / "tok-link" / "token", "token directory", "is a symlink")


@needs_root
def test_a_token_directory_owned_by_another_user_is_refused(repo: Path, tmp_path: Path) -> None:
    token = token_in(tmp_path / "tok")
    os.chown(token.parent, OTHER_UID, -1)
    assert_refused(repo, token, f"token directory '{token.parent}' is owned by '{OTHER_UID}'", "chown root")


def test_an_ancestor_others_can_write_is_refused_unless_sticky(repo: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may rename 'tok' away and put their own there
    token = token_in(shared / "tok")
    assert_refused(repo, token, f"directory '{shared}' above the token file is writable by others",
                   f"chmod +t {shared}")
    os.chmod(shared, 0o1777)  # sticky, like /tmp: only the owner of 'tok' (root or us) may rename it
    assert serve_starts(repo, token)


@needs_root
def test_in_a_sticky_ancestor_the_child_must_be_ours(repo: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    token = token_in(shared / "tok" / "inner")
    os.chown(shared / "tok", OTHER_UID, -1)  # its owner may rename it even in a sticky directory
    assert_refused(repo, token, "belongs to", "chown root")


@needs_root
def test_a_group_writable_ancestor_is_fine_when_only_we_are_in_the_group(repo: Path, tmp_path: Path) -> None:
    """Group write on an ancestor matters only if someone else is in that group: a group nobody is
    in (the gid has no /etc/group entry is the worst case and is refused; root's group is fine)."""
    parent = tmp_path / "grp"
    parent.mkdir()
    os.chmod(parent, 0o2775)
    token = token_in(parent / "tok")
    os.chown(parent, 0, 0)
    assert serve_starts(repo, token)
    os.chown(parent, 0, OTHER_GID)  # a group the system cannot list: assume it has other members
    assert_refused(repo, token, f"directory '{parent}' above the token file is writable by others", "chmod")


def serve_starts(repo: Path, token: Path) -> bool:
    with running_core(repo, repo.parent, ["--device", "cpu", "--token-file", str(token),
                                          "--state-dir", str(repo / "state")]) as proc:
        return proc.proc.poll() is None


def test_an_empty_token_file_is_refused(repo: Path, tmp_path: Path) -> None:
    token = token_in(tmp_path / "tok")
    token.write_text("\n")
    assert_refused(repo, token, "holds no token", f"rm {token}")


def test_the_token_the_server_creates_is_readable_only_by_root_and_the_repository_group(repo: Path,
                                                                                        tmp_path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(repo, -1, OTHER_GID)  # the publish group
    gid = repo.stat().st_gid
    token = tmp_path / "state" / "core" / "token"
    with running_core(repo, tmp_path, ["--device", "cpu", "--token-file", str(token),
                                       "--state-dir", str(tmp_path / "state" / "core")]) as proc:
        core = Core(proc.url, token.read_text().strip(), proc.proc, proc.log)
        assert core.call("POST", "/models/register", {"model_id": "demo/none@1"})[0] == 404  # authorized
        assert core.call("POST", "/models/register", {"model_id": "demo/none@1"}, token="wrong")[0] == 401
    dst, fst = token.parent.stat(), token.stat()
    assert stat.S_IMODE(dst.st_mode) == 0o2750 and dst.st_gid == gid
    assert stat.S_IMODE(fst.st_mode) == 0o640 and fst.st_gid == gid and fst.st_uid == os.geteuid()
    # and a restart accepts what it made
    with running_core(repo, tmp_path, ["--device", "cpu", "--token-file", str(token),
                                       "--state-dir", str(tmp_path / "state" / "core")]) as proc:
        assert Core(proc.url, "", proc.proc, proc.log).call("GET", "/health")[0] == 200
    assert len(token.read_text().strip()) >= 32
