"""Real users and groups for permission tests (root only), and running the real CLI as them.

The CLI runs in a forked child that drops to the user's uid, gid and groups and calls
``axon.cli.main``: the kernel then checks every open, chown and rename exactly as for that
user. (Exec'ing the venv's python as the user is not possible here: the interpreter lives under
/root.) Everything the child needs is imported before the fork.
"""

from __future__ import annotations

import importlib
import io
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

PREIMPORT = [
    "axon.cli", "axon.cli.publish", "axon.cli.cache", "axon.cli.install", "axon.cli.config", "axon.publish",
    "axon.production", "axon.install", "axon.cache", "axon.sources.local", "axon.package", "axon.model.onnx_signature",
    "axon.core_client", "onnx", "grp", "pwd", "socket", "tempfile", "json", "urllib.request", "traceback",
]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating users and groups needs root (CI runs as root)")


@contextmanager
def temp_group(prefix: str = "axg") -> Iterator[tuple[str, int]]:
    need_root()
    import grp

    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@contextmanager
def temp_user(groups: list[str] = (), prefix: str = "axu") -> Iterator[User]:  # type: ignore[assignment]
    need_root()
    import grp
    import pwd

    name = f"{prefix}{secrets.token_hex(3)}"
    cmd = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name]
    if groups:
        cmd[1:1] = ["-G", ",".join(groups)]
    subprocess.run(cmd, check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        gids = tuple(sorted({pw.pw_gid, *(grp.getgrnam(g).gr_gid for g in groups)}))
        yield User(name, pw.pw_uid, pw.pw_gid, gids)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def run_cli_as(user: User, args: list[str], env: dict[str, str]) -> Result:
    for mod in PREIMPORT:
        importlib.import_module(mod)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.environ.clear()
            os.environ.update(env)
            from axon.cli import main

            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
        except BaseException as exc:  # report, never fall back into pytest
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as o, os.fdopen(err_r, "rb") as e:
        stdout = o.read()
        stderr = e.read()
    _, status = os.waitpid(pid, 0)
    return Result(os.waitstatus_to_exitcode(status), stdout.decode(), stderr.decode())


def run_as(user: User, fn: Callable[[], object]) -> str:
    """Run *fn* in a forked child as *user*; returns "ok", or the name of the exception it raised
    (e.g. "PermissionError"): how a test checks what the kernel lets that user do."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        outcome = "ok"
        try:
            os.close(r)
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            fn()
        except BaseException as exc:
            outcome = type(exc).__name__
        finally:
            os.write(w, outcome.encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        outcome = f.read().decode()
    os.waitpid(pid, 0)
    return outcome
