"""What storing every file once saves, in one run:

1. `axon update` to a Hub revision that changed only a small file vs a fresh `axon install` of the
   same repo, against the Hub look-alike (tests/support/hub_server.py, in this process) with every
   connection throttled to --mbps MB/s.          target: update <= 5% of the fresh install's time
2. `axon publish` of a version sharing ~95% of its bytes with the published one vs the full publish
   of the first, and how much the repository grew.  target: <= 15% of the full publish's time,
   growth = the changed bytes

  .venv/bin/python benchmarks/bench_dedup.py [--size-mib 512] [--mbps 50]
"""

from __future__ import annotations

import argparse
import grp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--mbps", type=int, default=50)
    args = ap.parse_args()
    from tests.support.hub_server import FakeHub
    from tests.support.onnx_models import mlp_model
    from tests.support.publishing import distinct_bytes
    from tests.support.servers import serve_in_thread

    from axon.install import install
    from axon.publish import publish
    from axon.settings import Settings
    from axon.store.spec import parse_spec
    from axon.update import update

    work = Path(tempfile.mkdtemp(prefix="axon-bench-dedup-", dir="/var/tmp"))
    try:
        weights = os.urandom(args.size_mib << 20)
        model = mlp_model(seed=0).SerializeToString()
        hub = FakeHub(cdn=True, throttle_bps=args.mbps * 1_000_000)
        files = {"model.onnx": model, "weights.bin": weights, "config.json": b'{"v": 1}',
                 "tokenizer.json": b'{"version": "1.0"}'}
        hub.add_commit("bench/m", files)
        with serve_in_thread(hub.app()) as url:
            env = {"HOME": str(work), "AXON_HOME": str(work / ".axon"), "AXON_CACHE_DIR": str(work / "cache"),
                   "AXON_PUBLISH_DIR": str(work / "prod"), "HF_ENDPOINT": url}
            settings = Settings.from_env(env)
            spec = parse_spec("hf/bench/m")
            t0 = time.perf_counter()
            install(spec, settings)
            fresh = time.perf_counter() - t0
            hub.add_commit("bench/m", {**files, "config.json": b'{"v": 2}'})
            t0 = time.perf_counter()
            r = update(spec, settings)
            upd = time.perf_counter() - t0
            assert r.status == "replaced"
        print(f"install (fresh, {args.size_mib} MiB + small files, {args.mbps} MB/s per connection): {fresh:6.2f} s")
        print(f"update (one small file changed):                                    {upd:6.2f} s")
        print(f"  {'PASS' if upd / fresh <= 0.05 else 'FAIL'}  update / fresh install: {upd / fresh:.3f} "
              "(target <= 0.05)")

        # publish: two local versions sharing the weights (about 95% of the bytes); the repository
        # set up as an administrator would, with the caller's own group (root runs this)
        from axon.production import setup_production
        from axon.settings import set_config_value

        group = grp.getgrgid(os.getegid()).gr_name
        setup_production(work / "prod", group)
        set_config_value(settings.config_file, "publish_group", group)
        settings = Settings.from_env(env)
        src = work / "src"
        src.mkdir()
        shared = os.urandom(int((args.size_mib << 20) * 0.95))
        (src / "model.onnx").write_bytes(model)
        (src / "weights.bin").write_bytes(shared)
        (src / "extra.bin").write_bytes(os.urandom(int((args.size_mib << 20) * 0.05)))
        install(parse_spec("bench/p@1"), settings, from_=str(src))
        (src / "extra.bin").write_bytes(os.urandom(int((args.size_mib << 20) * 0.05)))
        install(parse_spec("bench/p@2"), settings, from_=str(src))
        os.sync()
        t0 = time.perf_counter()
        publish(parse_spec("bench/p@1"), settings)
        full = time.perf_counter() - t0
        before = distinct_bytes(work / "prod")
        t0 = time.perf_counter()
        second = publish(parse_spec("bench/p@2"), settings)
        dedup = time.perf_counter() - t0
        grew = distinct_bytes(work / "prod") - before
        print(f"publish (full, {args.size_mib} MiB):            {full:6.2f} s")
        print(f"publish (95% shared with the published one): {dedup:6.2f} s, repository grew {grew} bytes "
              f"(copied {second.bytes_copied}, linked {second.bytes_linked})")
        print(f"  {'PASS' if dedup / full <= 0.15 else 'FAIL'}  dedup publish / full publish: {dedup / full:.3f} "
              "(target <= 0.15)")
    finally:
        import subprocess

        subprocess.run(["chattr", "-a", str(work / "prod" / ".axon" / "audit.log")], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
