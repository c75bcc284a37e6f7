"""Publishing fixtures shared by the production-repository tests: packages, users, checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from axon.install import install
from axon.settings import Settings, set_config_value
from axon.store.integrity import verify_version_dir
from axon.store.layout import StoreLayout
from axon.store.manifest import load_manifest
from axon.store.spec import parse_spec
from tests.support.onnx_models import write_mlp

SPEC = "acme/ranker@1.0.0"


def install_package(settings: Settings, tmp_path: Path, seed: int = 0, spec: str = SPEC, big: int = 0) -> str:
    src = tmp_path / f"pkg-{seed}"
    write_mlp(src / "model.onnx", seed=seed)
    (src / "tokenizer").mkdir(parents=True, exist_ok=True)
    (src / "tokenizer" / "vocab.txt").write_text(f"[PAD]\n[UNK]\nhello{seed}\n")
    for i in range(big):
        (src / f"weights-{i}.bin").write_bytes(os.urandom(96 << 20))
    return install(parse_spec(spec), settings, from_=str(src), force=True).manifest.digest


def visible_versions_verify(settings: Settings) -> list[str]:
    digests = []
    for entry in StoreLayout(settings.publish_dir).iter_versions():
        assert entry.has_manifest, f"partial version visible: {entry.path}"
        m = load_manifest(entry.path / "manifest.yaml")
        assert verify_version_dir(entry.path, m).ok, f"visible version does not verify: {entry.path}"
        digests.append(m.digest)
    return digests


def user_env(base: Path, user_name: str, prod_root: Path) -> dict[str, str]:
    home = base / user_name
    return {"HOME": str(home), "AXON_HOME": str(home / ".axon"), "AXON_CACHE_DIR": str(home / "cache"),
            "AXON_PUBLISH_DIR": str(prod_root), "PATH": "/usr/bin:/bin"}


def prepare_user(base: Path, user: object, prod_root: Path, gname: str, tmp_path: Path) -> dict[str, str]:
    env = user_env(base, user.name, prod_root)  # type: ignore[attr-defined]
    settings = Settings.from_env(env)
    set_config_value(settings.config_file, "publish_group", gname)
    install_package(settings, tmp_path)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(base / user.name)], check=True)  # type: ignore[attr-defined]
    return env


def distinct_bytes(root: Path) -> int:
    """The bytes of the versions under a store root, each inode once (hard links count once)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(root):
        if "/.axon" in dirpath:
            continue
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
