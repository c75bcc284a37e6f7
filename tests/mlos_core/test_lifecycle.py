"""The server over its life: reloads, restarts, overload, SIGTERM, body limits, several workers, bad options."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from axon.demo import sandbox_settings
from axon.settings import Settings
from tests.support.core_server import Core, core_server, publish_dir_as
from tests.support.onnx_models import write_mlp
from tests.support.served import MLP, mlp_reference


def _post_chunked(host: str, port: int, path: str, pieces: list[bytes]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", path, body=iter(pieces), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_reload_restart_and_unregister(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    write_mlp(tmp_path / "v1" / "model.onnx", seed=1)
    write_mlp(tmp_path / "v2" / "model.onnx", seed=2)
    publish_dir_as(settings, MLP, tmp_path / "v1")
    x = {"inputs": {"x": [[0.5, 1, 2, 3]]}}
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
        first = c.call("POST", f"/models/{MLP}/inference", x)[1]["outputs"]["y"]["data"]
        assert c.call("POST", "/models/register", {"model_id": MLP})[1]["status"] == "unchanged"
        publish_dir_as(settings, MLP, tmp_path / "v2", force=True)
        status, body, _ = c.call("POST", "/models/register", {"model_id": MLP})
        assert status == 200 and body["status"] == "reloaded"
        second = c.call("POST", f"/models/{MLP}/inference", x)[1]["outputs"]["y"]["data"]
        assert second != first
    with core_server(settings.publish_dir, tmp_path) as c:  # restart: restored and re-verified
        assert [m["model_id"] for m in c.call("GET", "/models")[1]["models"]] == [MLP]
        assert c.call("POST", f"/models/{MLP}/inference", x)[1]["outputs"]["y"]["data"] == second
        assert c.call("DELETE", f"/models/{MLP}")[0] == 200
        assert c.call("POST", f"/models/{MLP}/inference", x)[0] == 404
    with core_server(settings.publish_dir, tmp_path) as c:
        assert c.call("GET", "/models")[1]["models"] == []


def test_queue_overflow_gets_503_while_admitted_requests_succeed(published: tuple[Settings, Path],
                                                                 tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--max-queue-size", "4", "--max-queue-delay-ms", "400",
                     "--max-batch-size", "64") as c:
        c.call("POST", "/models/register", {"model_id": MLP})
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            futs = [pool.submit(c.call, "POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
                    for _ in range(20)]
            time.sleep(0.15)  # four requests now fill the queue for the rest of the 400 ms window
            # a full queue is checked before the body is read: even a malformed request gets the 503,
            # and so does one whose body has not arrived (nothing waits for it)
            status, body, _ = c.call("POST", f"/models/{MLP}/inference", raw=b"{not json")
            host, port = c.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(f"POST /models/{MLP}/inference HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                             .encode())
                no_body = b""
                while b"queue_full" not in no_body and (chunk := sock.recv(4096)):
                    no_body += chunk
            results = [f.result() for f in futs]
        assert (status, body["code"]) == (503, "queue_full")
        assert no_body.startswith(b"HTTP/1.1 503") and b"queue_full" in no_body
    codes = sorted(r[0] for r in results)
    assert codes.count(200) >= 4 and codes.count(503) >= 1 and set(codes) <= {200, 503}
    rejected = [r for r in results if r[0] == 503]
    assert all(r[2].get("retry-after") == "1" and r[1]["code"] == "queue_full" for r in rejected)


def test_sigterm_drains_in_flight_requests(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--max-queue-delay-ms", "700", "--max-batch-size", "64") as c:
        c.call("POST", "/models/register", {"model_id": MLP})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(c.call, "POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
                    for _ in range(8)]
            time.sleep(0.3)  # the requests now wait in the batch window
            c.proc.send_signal(signal.SIGTERM)
            codes = [f.result()[0] for f in futs]
        # uvicorn re-raises the signal once drained: a clean SIGTERM exit, as systemd expects.
        assert c.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert codes == [200] * 8


def test_request_body_limit(published: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--max-body-bytes", "1000", "--no-intra-op-spinning",
                     "--intra-op-threads", "1") as c:
        c.call("POST", "/models/register", {"model_id": MLP})
        big = b'{"inputs": {"x": [' + b"[1,2,3,4]," * 200 + b"[1,2,3,4]]}}"
        status, body, _ = c.call("POST", f"/models/{MLP}/inference", raw=big)
        assert status == 413 and body["code"] == "body_too_large"
        # the same server (started without spinning, one intra-op thread) still serves normal bodies
        status, body, _ = c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})
        assert status == 200 and np.allclose(body["outputs"]["y"]["data"], mlp_reference(np.asarray([[1, 2, 3, 4]])))
        # chunked bodies (no Content-Length) arrive in several pieces: counted as they come
        host, port = c.url.removeprefix("http://").split(":")
        url = f"/models/{MLP}/inference"
        assert _post_chunked(host, int(port), url, [big[i:i + 100] for i in range(0, len(big), 100)])[0] == 413
        small = b'{"inputs": {"x": [[1, 2, 3, 4]]}}'
        status, body = _post_chunked(host, int(port), url, [small[:10], small[10:20], small[20:]])
        assert status == 200 and np.allclose(body["outputs"]["y"]["data"], mlp_reference(np.asarray([[1, 2, 3, 4]])))
        # a client that hangs up halfway through its body gets no answer and breaks nothing
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /models/{MLP}/inference HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
                         .encode() + small[:10])
        time.sleep(0.2)
        assert c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0] == 200
    assert "Traceback" not in c.log.read_text()


def test_concurrency_is_thread_safe_under_reload(core: Core, published: tuple[Settings, Path]) -> None:
    """Re-registering while clients hammer the model drops no request."""
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        while not stop.is_set():
            codes.append(core.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    status, _, _ = core.call("POST", "/models/register", {"model_id": MLP})
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert status == 200 and codes and set(codes) == {200}


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:  # a new connection: any worker
        return resp.read().decode()


def test_several_worker_processes_share_registrations_and_metrics(published: tuple[Settings, Path],
                                                                  tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from mlos_core.telemetry import Metrics

    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--workers", "2") as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] in (200, 201)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # connections land on both workers
            codes = list(pool.map(lambda _: c.call("POST", f"/models/{MLP}/inference",
                                                   {"inputs": {"x": [[1, 2, 3, 4]]}})[0], range(60)))
        assert set(codes) == {200}
        shared = Path(re.search(r"workers share their metrics in (\S+)", c.log.read_text()).group(1))  # type: ignore[union-attr]
        assert stat.S_IMODE(shared.stat().st_mode) == 0o700  # the server user's alone
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # each worker shares its own counts within a second
            published_ok = {p.name: sum(v for m, o, v in json.loads(p.read_text())["requests"] if o == "ok")
                            for p in shared.glob("*.json")}
            if len(published_ok) == 2 and sum(published_ok.values()) == 60:
                break
            time.sleep(0.2)
        assert len(published_ok) == 2 and sum(published_ok.values()) == 60, published_ok
        gone = Metrics()  # what a worker that died left behind: its counts stay, its gauges do not
        for _ in range(3):
            gone.request(MLP, "ok", latency_s=0.002)
        gone.gauges["mlos_models_loaded"] = lambda: {"": 7}
        (shared / "999999999-0dead.json").write_text(json.dumps(gone.snapshot()))
        # what is not a worker's snapshot is left out, whatever it holds: never a 500, never bad text
        (shared / "999999998-bad1.json").write_text('{"requests": [["demo/mlp@1", "ok", "1000"]]}')
        (shared / "999999998-bad2.json").write_text(json.dumps({"gauges": {"mlos_models_loaded": {"": "many"}}}))
        forged = 'x"} 1\nmlos_requests_total{model="forged'  # a label value that would end the line early
        (shared / "999999998-odd.json").write_text(json.dumps({"requests": [[forged, "ok", 5]]}))
        (shared / "999999998-bad3.json").write_text("[" * 100_000)
        (shared / "999999998-bad4.json").symlink_to(shared / "999999999-0dead.json")
        os.mkfifo(shared / "999999998-bad5.json")
        for _ in range(10):  # whichever worker a scrape reaches, it counts every worker's requests
            text = scrape(c.url)
            assert f'mlos_requests_total{{model="{MLP}",outcome="ok"}} 63' in text, text
            assert f'mlos_request_duration_seconds_count{{model="{MLP}"}} 63' in text, text
            assert "mlos_models_loaded 1\n" in text  # the same model in both workers: the most, not a sum
            models = {s.labels.get("model") for f in text_string_to_metric_families(text) for s in f.samples}
            assert forged in models and "forged" not in models  # escaped: Prometheus' own parser reads it back
        assert c.call("DELETE", f"/models/{MLP}")[0] == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every worker follows the registrations file
            codes = [c.call("POST", f"/models/{MLP}/inference", {"inputs": {"x": [[1, 2, 3, 4]]}})[0]
                     for _ in range(10)]
            if set(codes) == {404}:
                break
            time.sleep(0.2)
        assert set(codes) == {404}


def test_keep_alive_clients_spread_over_the_workers(published: tuple[Settings, Path], tmp_path: Path) -> None:
    """32 keep-alive clients connecting at once: every worker holds some of them (each worker
    listens on its own SO_REUSEPORT socket). One shared socket let the first worker awake accept
    the whole burst."""
    import urllib.parse

    import psutil

    settings, _ = published
    with core_server(settings.publish_dir, tmp_path, "--workers", "2") as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] in (200, 201)
        url = urllib.parse.urlsplit(c.url)

        def on_port(worker: psutil.Process, status: str) -> int:
            try:
                return sum(1 for k in worker.net_connections("tcp") if k.status == status and k.laddr.port == url.port)
            except psutil.NoSuchProcess:
                return 0

        def workers() -> list[psutil.Process]:
            return [p for p in psutil.Process(c.proc.pid).children(recursive=True) if on_port(p, psutil.CONN_LISTEN)]

        deadline = time.monotonic() + 30
        while len(workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        body = json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}})
        headers = {"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"}
        barrier = threading.Barrier(32)

        def client(_: int) -> http.client.HTTPConnection:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            barrier.wait()
            conn.request("POST", f"/models/{MLP}/inference", body, headers)
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
            return conn  # kept open: its worker keeps it

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            conns = list(pool.map(client, range(32)))
        try:
            held = {w.pid: on_port(w, psutil.CONN_ESTABLISHED) for w in workers()}
            assert len(held) == 2 and sum(held.values()) == 32 and all(held.values()), held
        finally:
            for conn in conns:
                conn.close()


def test_bad_server_options_exit_2(tmp_path: Path) -> None:
    for args in (["--precision", "fp16", "--device", "cpu"], ["--device", "tpu"]):
        proc = subprocess.run([sys.executable, "-m", "mlos_core", "serve", "--repository", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr



def test_workers_share_the_cores_between_their_sessions() -> None:
    from mlos_core.settings import ServerSettings

    cores = len(os.sched_getaffinity(0))
    assert ServerSettings(workers=1).session_threads == cores
    assert ServerSettings(workers=2).session_threads == max(1, cores // 2)
    assert ServerSettings(workers=64).session_threads == 1
    assert ServerSettings(workers=2, intra_op_threads=3).session_threads == 3  # as set, whatever the workers
