"""`axon publish` of a multi-GB model against what an administrator would do by hand, in one run.

Generates a package (three large weight files or --large-files of them, many small files, a real
model.onnx), installs it
into a sandbox dev cache, then times (best of --repeat, destination removed and `sync` between):

  axon publish (library call: no-follow opens, staged copy from the fds, fsync, verify copy, modes, rename, audit)
  cp -r + sync + openssl dgst -sha256 of the copy        (coreutils sha256sum lacks SHA-NI here)
  shutil.copytree + sync + hashlib sha256 of the copy

  .venv/bin/python benchmarks/bench_publish.py [--size-gib 4] [--small-files 1000] [--large-files 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from axon.example_model import EncoderConfig, build_encoder_onnx
from axon.install import install
from axon.publish import publish, unpublish
from axon.settings import Settings
from axon.store.spec import parse_spec
from bench_fastio import best_of, copytree_sync_sha256, make_tree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--large-files", type=int, default=3, help="weight files sharing --size-gib (1: one big "
                    "model.safetensors-style file)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="axon-bench-publish-", dir="/var/tmp"))
    try:
        pkg = work / "pkg"
        make_tree(pkg, args.size_gib, args.small_files, args.large_files)
        (pkg / "model.onnx").write_bytes(build_encoder_onnx(EncoderConfig(), 200).SerializeToString())
        env = {"AXON_HOME": str(work / "home"), "AXON_CACHE_DIR": str(work / "cache"),
               "AXON_PUBLISH_DIR": str(work / "prod"), "HOME": str(work / "home")}
        settings = Settings.from_env(env)
        (work / "prod").mkdir()
        spec = parse_spec("bench/model@1")
        t0 = time.perf_counter()
        installed = install(spec, settings, from_=str(pkg))
        total = installed.manifest.total_size
        print(f"installed {total / 2**30:.2f} GiB in {len(installed.manifest.files)} files "
              f"({time.perf_counter() - t0:.1f} s); {os.cpu_count()} CPUs", flush=True)
        src = installed.path
        dst = work / "manual"

        def clean() -> None:
            if dst.exists():
                shutil.rmtree(dst)
            if (work / "prod" / "bench" / "model" / "1").exists():
                unpublish(spec, settings, purge=True)
            os.sync()

        t_axon = best_of(args.repeat, lambda: publish(spec, settings), clean)
        print(f"axon publish                                   {t_axon:7.2f} s", flush=True)
        openssl = shutil.which("openssl")

        def cp_openssl() -> None:
            subprocess.run(f"cp -r '{src}' '{dst}' && sync", shell=True, check=True)
            files = [str(p) for p in dst.rglob("*") if p.is_file()]
            for i in range(0, len(files), 200):
                subprocess.run([openssl or "sha256sum", "dgst", "-sha256", *files[i:i + 200]] if openssl
                               else ["sha256sum", *files[i:i + 200]], check=True, stdout=subprocess.DEVNULL)

        t_cp = best_of(args.repeat, cp_openssl, clean)
        print(f"cp -r + sync + {'openssl dgst -sha256' if openssl else 'sha256sum'}         {t_cp:7.2f} s", flush=True)

        t_py = best_of(args.repeat, lambda: copytree_sync_sha256(src, dst), clean)
        print(f"shutil.copytree + sync + hashlib               {t_py:7.2f} s", flush=True)
        clean()
        print(f"\nratios: axon publish is {t_cp / t_axon:.2f}x faster than cp+sync+openssl, "
              f"{t_py / t_axon:.2f}x faster than copytree+hashlib "
              f"(and it also verifies the copy against the manifest (sha256 + xxh3), sets modes, fsyncs and audits)")
    finally:
        subprocess.run(["chattr", "-a", str(work / "prod" / ".axon" / "audit.log")], check=False,
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
