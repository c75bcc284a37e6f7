"""A small closed-loop HTTP/1.1 load generator (asyncio + uvloop, keep-alive), run as its own process.

Each of --clients connections sends one request, waits for the answer, and sends the next. Once
every connection is open, all clients run --warmup seconds at full load unrecorded (the first
instant is a thundering herd of --clients simultaneous requests, not the steady state), then
--seconds measured. Prints one JSON line: throughput,
latency percentiles, status counts, and the latency of rejections (503) separately. After a 503 a
client waits the Retry-After the server asked for, as HTTP clients should (--ignore-retry-after:
resend at once).

  python benchmarks/loadgen.py --url http://127.0.0.1:8080/models/ns/m@1/inference --body '{"input": "hi"}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.parse


class Start:
    """Every client connects first; the clock starts when all are connected, so the numbers
    describe requests on open keep-alive connections, not a storm of TCP/HTTP handshakes."""

    def __init__(self, clients: int, honor_retry_after: bool = True) -> None:
        self.honor_retry_after = honor_retry_after
        self.waiting = clients
        self.all_connected = asyncio.Event()
        self.go = asyncio.Event()
        self.record_from = 0.0
        self.stop_at = 0.0

    def connected(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_connected.set()


async def one_client(host: str, port: int, path: str, body: bytes, start: Start, lat: list[float],
                     rejected: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    start.connected()
    await start.go.wait()
    try:
        while time.perf_counter() < start.stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length = 0
            retry_after = 0.0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                elif line[:12].lower() == b"retry-after:":
                    retry_after = float(line[12:])
            await reader.readexactly(length)
            dt = time.perf_counter() - t0
            if t0 >= start.record_from:
                statuses[status] = statuses.get(status, 0) + 1
                (lat if status == 200 else rejected).append(dt)
            if status == 503 and start.honor_retry_after and retry_after:
                await asyncio.sleep(min(retry_after, max(0.0, start.stop_at - time.perf_counter())))
    finally:
        writer.close()


async def run_clients(host: str, port: int, path: str, body: bytes, clients: int, warmup: float, seconds: float,
                      lat: list[float], rejected: list[float], statuses: dict[int, int],
                      honor_retry_after: bool = True) -> float:
    """Connect *clients*, run them *warmup* seconds unrecorded, then *seconds* recorded; returns
    the measured wall time."""
    start = Start(clients, honor_retry_after)
    tasks = [asyncio.ensure_future(one_client(host, port, path, body, start, lat, rejected, statuses))
             for _ in range(clients)]
    await start.all_connected.wait()
    start.record_from = time.perf_counter() + warmup
    start.stop_at = start.record_from + seconds
    start.go.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - start.record_from


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def run(url: str, body: bytes, clients: int, seconds: float, warmup: float,
              honor_retry_after: bool = True) -> dict[str, object]:
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "", u.port or 80
    lat: list[float] = []
    rejected: list[float] = []
    statuses: dict[int, int] = {}
    wall = await run_clients(host, port, u.path, body, clients, warmup, seconds, lat, rejected, statuses,
                             honor_retry_after)
    return {"clients": clients, "seconds": round(wall, 2), "ok": len(lat), "throughput": len(lat) / wall,
            "p50_ms": pct(lat, 50) * 1e3, "p95_ms": pct(lat, 95) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "statuses": statuses, "rejected": len(rejected), "reject_p50_ms": pct(rejected, 50) * 1e3,
            "reject_p99_ms": pct(rejected, 99) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1, help="seconds at full load before measuring")
    ap.add_argument("--ignore-retry-after", action="store_true",
                    help="resend at once after a 503 instead of waiting its Retry-After (a retry storm)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.body.encode(), args.clients, args.seconds, args.warmup,
                                     not args.ignore_retry_after))))


if __name__ == "__main__":
    main()
