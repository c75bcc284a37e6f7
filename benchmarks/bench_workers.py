"""``mlos-core serve --workers 2`` against ``--workers 1``, HTTP-bound: the tiny example model,
32 keep-alive clients from benchmarks/loadgen.py on the same machine, five rounds (the two layouts
back to back in each), the ratio of every round printed. Target: >= 1.4x in every round (one shared
listening socket made it bimodal: the first worker awake took the whole burst of connections).

  .venv/bin/python benchmarks/bench_workers.py [--rounds 5] [--seconds 5] [--clients 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from axon.core_process import CoreProcess, start_core
from bench_server import load, prepare

TINY = "bench/tiny@1"
EXTRA: list[str] = []
SPLITS: list[list[int]] = []


def connections(server: CoreProcess) -> list[int]:
    """Established client connections each worker holds (how the kernel spread them)."""
    import psutil

    port = int(server.url.rsplit(":", 1)[1])
    held = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            n = sum(1 for k in p.net_connections("tcp") if k.status == psutil.CONN_ESTABLISHED and k.laddr.port == port)
        except psutil.NoSuchProcess:
            continue
        if n:
            held.append(n)
    return sorted(held) or [0]
BODY = {"input": "Hello, MLOS!", "outputs": ["embeddings"]}


def throughput(repo: Path, work: Path, workers: int, clients: int, seconds: float) -> float:
    import json
    import urllib.request

    work.mkdir(parents=True, exist_ok=True)
    server = start_core(repo, work, ["--device", "cpu", "--log-level", "warning", "--workers", str(workers),
                                     *EXTRA])
    try:
        token = (repo / ".axon" / "core" / "token").read_text().strip()
        req = urllib.request.Request(server.url + "/models/register", data=json.dumps({"model_id": TINY}).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=300).read()
        load(server.url + f"/models/{TINY}/inference", BODY, clients, 1.0)  # every worker has loaded it
        split: list[int] = []
        watcher = threading.Thread(target=lambda: (time.sleep(seconds / 2 + 1.5), split.extend(connections(server))))
        watcher.start()
        result = load(server.url + f"/models/{TINY}/inference", BODY, clients, seconds)
        watcher.join()
        SPLITS.append(split)
        if set(result["statuses"]) != {"200"}:
            raise SystemExit(f"non-200 answers with --workers {workers}: {result['statuses']}")
        return float(result["throughput"])
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--server-arg", action="append", default=[], help="passed to both servers (repeatable)")
    args = ap.parse_args()
    EXTRA.extend(args.server_arg)
    with tempfile.TemporaryDirectory(prefix="axon-bench-workers-") as tmp:
        work = Path(tmp)
        repo = prepare(work, "minilm", tiny_only=True)
        ratios = []
        for r in range(1, args.rounds + 1):
            one = throughput(repo, work / f"w1-{r}", 1, args.clients, args.seconds)
            two = throughput(repo, work / f"w2-{r}", 2, args.clients, args.seconds)
            ratios.append(two / one)
            print(f"round {r}: --workers 1 {one:8.0f} req/s   --workers 2 {two:8.0f} req/s   ratio {two / one:.2f}"
                  f"   (connections per worker: {SPLITS[-1]})", flush=True)
    ok = min(ratios) >= 1.4
    print(f"\n{'PASS' if ok else 'MISS'} --workers 2 / --workers 1, every round >= 1.4x: "
          f"min {min(ratios):.2f}, max {max(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
