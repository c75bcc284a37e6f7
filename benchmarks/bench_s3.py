"""An s3:// repository against what a user would do with boto3 by hand, in one run, against a real
S3 server on loopback (moto in server mode, in its own process).

Generates a package (one large weight file of --size-gib plus --small-files small ones and a real
model.onnx), installs it into a sandbox dev cache, then times (best of --repeat, a fresh bucket
each time):

  publish   `axon publish` to s3:// (hashing overlaps the parallel multipart upload; the manifest last)
            vs boto3 `upload_file` of every file + a hashlib sha256 pass           target >= 1.0x
  fetch     `mlos-core fetch` into the verified cache (hashed as written, checked, moved into place)
            vs boto3 `download_file` of every file + a hashlib sha256 pass        target >= 1.2x
            peak RSS of each (a process of its own)                                 flat in file size

  .venv/bin/python benchmarks/bench_s3.py [--size-gib 2] [--small-files 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support.s3_server import CREDENTIALS, moto_server, new_bucket  # noqa: E402


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


BASELINE_UPLOAD = """
import hashlib, sys, boto3
from pathlib import Path
bucket, root = sys.argv[1], Path(sys.argv[2])
c = boto3.session.Session().client("s3")
for p in sorted(q for q in root.rglob("*") if q.is_file()):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    c.upload_file(str(p), bucket, "manual/" + p.relative_to(root).as_posix())
"""

BASELINE_DOWNLOAD = """
import hashlib, resource, sys, boto3
from pathlib import Path
bucket, prefix, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
c = boto3.session.Session().client("s3")
for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        out = dest / item["Key"][len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        c.download_file(bucket, item["Key"], str(out))
        h = hashlib.sha256()
        with open(out, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

OURS_PUBLISH = """
import json, sys, time
from axon.publish import publish
from axon.settings import Settings
from axon.store.spec import parse_spec
t0 = time.perf_counter()
r = publish(parse_spec(sys.argv[1]), Settings.from_env())
print(json.dumps({"status": r.status, "s": time.perf_counter() - t0}))
"""


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{args[:4]} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t0, out.stdout


def maxrss_of(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of a child process."""
    code = ("import resource, subprocess, sys, time\nt0 = time.perf_counter()\n"
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
            "print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    _, out = run([sys.executable, "-c", code, *args], env)
    seconds, rss = out.split()
    return float(seconds), int(rss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--small-files", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="axon-bench-s3-", dir="/var/tmp"))
    results: list[tuple[str, str, bool]] = []
    try:
        from axon.example_model import EncoderConfig, build_encoder_onnx

        pkg = work / "pkg"
        pkg.mkdir()
        with open(pkg / "model.safetensors", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(int(args.size_gib * 1024)):
                f.write(block)
        for i in range(args.small_files):
            (pkg / f"extra-{i}.json").write_text(json.dumps({"i": i, "pad": "x" * 2000}))
        (pkg / "model.onnx").write_bytes(build_encoder_onnx(EncoderConfig(), 200).SerializeToString())
        with moto_server() as endpoint:
            env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AXON_HOME": str(work / "home"),
                   "AXON_CACHE_DIR": str(work / "cache"), "HOME": str(work / "home"),
                   "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE.parent)])}
            spec = "bench/model@1"
            run([sys.executable, "-m", "axon", "install", spec, "--from", str(pkg), "--quiet"], env)
            src = work / "cache" / "bench" / "model" / "1"
            size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
            print(f"package: {size / 2**30:.2f} GiB in {sum(1 for p in src.rglob('*') if p.is_file())} files; "
                  f"{os.cpu_count()} CPUs; moto at {endpoint}", flush=True)
            ours_pub, base_pub, ours_fetch, base_fetch = [], [], [], []
            rss_ours, rss_base = 0, 0
            for _ in range(args.repeat):
                bucket = new_bucket(endpoint)
                url = f"s3://{bucket}/prod"
                e = {**env, "AXON_PUBLISH_DIR": url}
                run([sys.executable, "-m", "axon", "setup-production"], e)
                _, out = run([sys.executable, "-c", OURS_PUBLISH, spec], e)
                ours_pub.append(json.loads(out)["s"])
                t, _ = run([sys.executable, "-c", BASELINE_UPLOAD, bucket, str(src)], e)
                base_pub.append(t)
                cache = work / f"fetch-{bucket}"
                t, rss = maxrss_of([sys.executable, "-m", "mlos_core", "fetch", spec, "--repository", url,
                                    "--cache-dir", str(cache)], e)
                ours_fetch.append(t)
                rss_ours = max(rss_ours, rss)
                manual = work / f"manual-{bucket}"
                t, rss = maxrss_of([sys.executable, "-c", BASELINE_DOWNLOAD, bucket, "manual/", str(manual)], e)
                base_fetch.append(t)
                rss_base = max(rss_base, rss)
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(manual, ignore_errors=True)
        pub = min(base_pub) / min(ours_pub)
        fetch = min(base_fetch) / min(ours_fetch)
        print(f"publish: axon {min(ours_pub):.2f} s, boto3 upload_file + sha256 {min(base_pub):.2f} s")
        print(f"fetch:   mlos-core {min(ours_fetch):.2f} s, boto3 download_file + sha256 {min(base_fetch):.2f} s")
        print(f"peak RSS: mlos-core fetch {rss_ours / 1024:.0f} MiB, boto3 {rss_base / 1024:.0f} MiB "
              f"(package {size / 2**20:.0f} MiB)")
        results.append(("publish vs boto3 upload_file + sha256 (x faster)", f"{pub:.2f}", pub >= 1.0))
        results.append(("fetch vs boto3 download_file + sha256 (x faster)", f"{fetch:.2f}", fetch >= 1.2))
        flat = rss_ours / 1024 < 0.25 * size / 2**20 + 200
        results.append(("fetch peak RSS flat in file size (MiB)", f"{rss_ours / 1024:.0f}", flat))
        for name, value, ok in results:
            print(f"  {'PASS' if ok else 'MISS'}  {name}: {value}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
