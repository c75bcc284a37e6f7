"""A small closed-loop HTTP/1.1 load generator (asyncio + uvloop, keep-alive), run as its own process.

Each of --clients connections sends one request, waits for the answer, and sends the next, for
--seconds. Prints one JSON line: throughput, latency percentiles, status counts, and the latency
of rejections (503) separately.

  python benchmarks/loadgen.py --url http://127.0.0.1:8080/models/ns/m@1/inference --body '{"input": "hi"}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.parse


async def one_client(host: str, port: int, path: str, body: bytes, stop_at: float, lat: list[float],
                     rejected: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            dt = time.perf_counter() - t0
            statuses[status] = statuses.get(status, 0) + 1
            (lat if status == 200 else rejected).append(dt)
    finally:
        writer.close()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def run(url: str, body: bytes, clients: int, seconds: float, warmup: float) -> dict[str, object]:
    u = urllib.parse.urlsplit(url)
    if warmup:
        await asyncio.gather(*(one_client(u.hostname or "", u.port or 80, u.path, body, time.perf_counter() + warmup,
                                          [], [], {}) for _ in range(min(clients, 4))))
    lat: list[float] = []
    rejected: list[float] = []
    statuses: dict[int, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(u.hostname or "", u.port or 80, u.path, body, t0 + seconds, lat, rejected,
                                      statuses) for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 2), "ok": len(lat), "throughput": len(lat) / wall,
            "p50_ms": pct(lat, 50) * 1e3, "p95_ms": pct(lat, 95) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "statuses": statuses, "rejected": len(rejected), "reject_p99_ms": pct(rejected, 99) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.body.encode(), args.clients, args.seconds, args.warmup))))


if __name__ == "__main__":
    main()
