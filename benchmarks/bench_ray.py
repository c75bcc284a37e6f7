"""MLOS Core behind Ray Serve (2 replicas) vs bare `mlos-core serve --workers 2`, in one run.

Same host, same model (the MiniLM-L6-shaped encoder of bench_server.py), same server settings,
same load generator (benchmarks/loadgen.py, closed loop, keep-alive):

  single sentence    16 clients          throughput and p50/p99, Ray / bare
  32 sentences       4 clients           throughput and p50/p99, Ray / bare     target >= 0.8x

Ray is measured with its default proxy and with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (a fresh
local Ray each). RAY_SERVE_ENABLE_HA_PROXY needs the haproxy binary on the host: measured when
it is there, reported as skipped otherwise.

  .venv/bin/python benchmarks/bench_ray.py [--seconds 6] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_server import SENTENCE, core, load, prepare  # noqa: E402

MODEL = "bench/encoder@1"
PATH = f"/models/{MODEL}/inference"
LOADS = {"1 sentence": ({"input": SENTENCE, "outputs": ["embeddings"]}, 16),
         "32 sentences": ({"input": [SENTENCE] * 32, "outputs": ["embeddings"]}, 4)}
SERVER = ["--max-batch-size", "32", "--max-queue-size", "1024", "--intra-op-threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_round(repo: Path, work: Path, device: str, seconds: float, mode: str) -> dict[str, Any]:
    """Start a local Ray in a child process (so each mode gets a fresh one with its environment),
    deploy 2 replicas, run the loads; the child prints one JSON line per load."""
    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
import ray
from ray import serve
from axon.store.deployment import Deployment
from axon.store.manifest import manifest_digest_of
from axon.store.spec import parse_spec
from bench_server import load
from mlos_core import ray_serve
from mlos_core.settings import ServerSettings

port = {free_port()}
ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
serve.start(http_options={{"host": "127.0.0.1", "port": port}})
repo = {str(repo)!r}
pin = manifest_digest_of(open(repo + "/bench/encoder/1/manifest.yaml", "rb").read())
settings = ServerSettings(repository=Path(repo), device={device!r}, max_batch_size=32, max_queue_size=1024,
                          intra_op_threads=1, state_dir=Path({str(work)!r}) / "ray-state")
d = Deployment(repo, replicas=2).with_model(parse_spec({MODEL!r}), pin)
status = ray_serve.deploy(settings, d, num_cpus=1)
assert status["status"] == "RUNNING", status
out = {{}}
for name, (body, clients) in {LOADS!r}.items():
    out[name] = load(f"http://127.0.0.1:{{port}}{PATH}", body, clients, {seconds})
print(json.dumps(out), flush=True)
serve.shutdown(); ray.shutdown()
"""
    env = {**os.environ}
    if mode == "throughput":
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    if mode == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False,
                          timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"Ray round ({mode}) failed:\n{proc.stderr[-3000:]}")
    import json

    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")), None)  # Ray prints too
    if line is None:
        raise SystemExit(f"Ray round ({mode}) printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return dict(json.loads(line))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="axon-bench-ray-", dir="/var/tmp"))
    try:
        repo = prepare(work, "minilm")
        print(f"work dir {work}; {os.cpu_count()} CPUs; device {args.device}", flush=True)
        s = core(repo, work, args.device, "--workers", "2", *SERVER, models=(MODEL,))
        time.sleep(2)  # the second worker loads the registration too
        bare = {name: load(s.url + PATH, body, clients, args.seconds) for name, (body, clients) in LOADS.items()}
        s.stop()
        modes = ["default", "throughput"] + (["haproxy"] if shutil.which("haproxy") else [])
        rounds = {mode: ray_round(repo, work, args.device, args.seconds, mode) for mode in modes}
        if "haproxy" not in modes:
            print("haproxy: skipped (no haproxy binary on this host)")
        results = []
        for name in LOADS:
            b = bare[name]
            print(f"{name:<13} bare --workers 2: {b['throughput']:7.1f} req/s  p50 {b['p50_ms']:6.1f}  "
                  f"p99 {b['p99_ms']:6.1f} ms  {b['statuses']}")
            for mode, r in rounds.items():
                x = r[name]
                ratio = x["throughput"] / b["throughput"]
                print(f"{'':<13} ray ({mode}):{'':<{10 - len(mode)}}{x['throughput']:7.1f} req/s  p50 "
                      f"{x['p50_ms']:6.1f}  p99 {x['p99_ms']:6.1f} ms  {x['statuses']}  ratio {ratio:.2f}")
                results.append((name, mode, ratio))
        print("\nsummary:")
        for name, mode, ratio in results:
            target = name == "32 sentences"
            verdict = ("PASS" if ratio >= 0.8 else "MISS") if target else "    "
            print(f"  {verdict}  Ray ({mode}) / bare, {name}: {ratio:.2f}x" + ("  (target >= 0.8)" if target else ""))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
