"""`axon install` from the Hub vs `hf download` (huggingface_hub's own CLI) of the same repo, in one
run, against the local Hub look-alike (tests/support/hub_server.py) in its own process, its LFS
files redirected to a CDN route as the Hub does.

The repo: a model.onnx whose weights are one external data file of --size-mib, plus small files.
Two rounds: every connection throttled to --mbps MB/s (what one CDN connection gets), then
unthrottled. Each tool downloads into its own fresh directory; best of --repeat.

  targets: throttled   axon >= 4x faster than hf download
           unthrottled axon no slower than hf download (>= 1.0x)

  .venv/bin/python benchmarks/bench_download.py [--size-mib 512] [--mbps 50] [--repeat 1]
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "bench/encoder"

SERVER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import uvicorn
from tests.support.hub_server import FakeHub

src = Path({src!r})
hub = FakeHub(cdn=True, throttle_bps={bps})
hub.add_dir({repo!r}, src)
uvicorn.run(hub.app(), host="127.0.0.1", port={port}, log_level="error", lifespan="off")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_repo(src: Path, size_mib: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = int((size_mib * (1 << 20) / 4) ** 0.5)
    w = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "bench",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src.mkdir(parents=True)
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True, location="model.onnx_data",
                    size_threshold=0)
    (src / "config.json").write_text('{"model_type": "bench"}')
    for i in range(8):
        (src / f"extra-{i}.txt").write_text(f"small file {i}\n" * 50)


def serve(src: Path, bps: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = SERVER.format(root=str(ROOT), src=str(src), bps=bps, repo=REPO, port=port)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                url = f"http://127.0.0.1:{port}"
                # the look-alike hashes its files on the first metadata call (the real Hub knows them):
                # done here, so neither tool pays for it
                urllib.request.urlopen(f"{url}/api/models/{REPO}/revision/main?blobs=true", timeout=120).read()
                return proc, url
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the Hub look-alike did not start")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return elapsed


def round_(src: Path, work: Path, bps: int | None, repeat: int, size: int) -> tuple[float, float]:
    proc, url = serve(src, bps)
    try:
        best_axon = best_hf = float("inf")
        for i in range(repeat):
            home = work / f"axon-{bps}-{i}"
            env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1", "AXON_HOME": str(home / ".axon"),
                   "AXON_CACHE_DIR": str(home / "cache"), "HOME": str(home), "HF_HOME": str(home / "hf")}
            best_axon = min(best_axon, timed([sys.executable, "-m", "axon", "install", f"hf/{REPO}@main", "--json"],
                                             env))
            best_hf = min(best_hf, timed([str(Path(sys.executable).parent / "hf"), "download", REPO,
                                          "--local-dir", str(home / "hf-dl")], env))
            shutil.rmtree(home, ignore_errors=True)
    finally:
        proc.terminate()
        proc.wait(10)
    label = f"{bps / 1e6:.0f} MB/s per connection" if bps else "unthrottled"
    print(f"{label:>26}:  axon install {best_axon:6.2f} s ({size / best_axon / 1e6:6.1f} MB/s)   "
          f"hf download {best_hf:6.2f} s ({size / best_hf / 1e6:6.1f} MB/s)   ratio {best_hf / best_axon:.2f}x",
          flush=True)
    return best_axon, best_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--mbps", type=float, default=50)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="axon-bench-download-", dir="/var/tmp"))
    try:
        src = work / "src"
        make_repo(src, args.size_mib)
        size = sum(f.stat().st_size for f in src.iterdir())
        print(f"work dir {work}; {os.cpu_count()} CPUs; repo {size / (1 << 20):.0f} MiB "
              f"(model.onnx_data {(src / 'model.onnx_data').stat().st_size / (1 << 20):.0f} MiB)", flush=True)
        throttled = round_(src, work, int(args.mbps * 1e6), args.repeat, size)
        free = round_(src, work, None, args.repeat, size)
        print("\nsummary:")
        for name, (a, h), target in (("throttled", throttled, 4.0), ("unthrottled", free, 1.0)):
            ok = "PASS" if h / a >= target else "FAIL"
            print(f"  {ok}  axon install / hf download, {name}: {h / a:.2f}x  (target >= {target})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
