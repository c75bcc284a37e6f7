"""Large Content-Length bodies are read by the parse helper from the client socket itself, never by
the event loop (protocol.py, parse_helper.py). A real server on 127.0.0.1 and raw sockets: what is
checked is the answer (numbers against onnxruntime on the model itself), that the connection closes
after it (the parser never saw the rest of the body), and what happens when the client stalls,
hangs up or asks for ``100-continue``."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from axon.settings import Settings
from mlos_core.wire import LARGE_BODY_BYTES
from tests.mlos_core.test_hostile_clients import GIVE_UP_S, WellBehaved, host_port, json_error, read_until_closed
from tests.support.core_server import Core, core_server
from tests.support.served import MLP, TEXT, mlp_reference

ROWS = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
PAD = b" " * (LARGE_BODY_BYTES + (1 << 20))  # JSON whitespace: a valid request, well above the hand-off size


def native_body() -> bytes:
    return b'{"inputs": {"x": ' + PAD + json.dumps(ROWS.tolist()).encode() + b"}}"


def request_head(path: str, length: int, *extra: str) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
                        f"Content-Length: {length}", *extra, "", ""]).encode()


def read_one_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body) by its Content-Length; more bytes may follow."""
    sock.settimeout(GIVE_UP_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, first = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    body = bytearray(first)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(lines[0].split()[1]), headers, bytes(body)


def helper_pids(core: Core) -> set[int]:
    return {p.pid for p in psutil.Process(core.proc.pid).children(recursive=True)}


def post_large(core: Core, body: bytes) -> int:
    with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
        sock.sendall(request_head(f"/models/{MLP}/inference", len(body)) + body)
        return read_one_response(sock)[0]


@pytest.fixture(scope="module")
def core(published: tuple[Settings, Path]) -> Iterator[Core]:
    settings, tmp = published
    with core_server(settings.publish_dir, tmp, "--body-timeout", "1") as c:
        for spec in (MLP, TEXT):
            assert c.call("POST", "/models/register", {"model_id": spec})[0] == 201
        yield c
    assert "Traceback" not in c.log.read_text()


def test_a_large_body_sent_in_pieces_is_answered_exactly_and_the_connection_closes(core: Core) -> None:
    body = native_body()
    with WellBehaved(core) as client, socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
        sock.sendall(request_head(f"/models/{MLP}/inference", len(body)) + body[:1000])
        time.sleep(0.2)  # the server has the head and the first bytes; the rest comes in pieces
        for i in range(1000, len(body), 300_000):
            sock.sendall(body[i : i + 300_000])
            time.sleep(0.05)
        status, headers, answer = read_one_response(sock)
        assert read_until_closed(sock) == b""  # closed after the answer, nothing else sent
    client.assert_served()
    assert (status, headers["connection"]) == (200, "close"), answer
    np.testing.assert_allclose(np.asarray(json.loads(answer)["outputs"]["y"]["data"]), mlp_reference(ROWS),
                               rtol=1e-6, atol=1e-6)


def test_a_large_kserve_body_with_binary_tensors_is_answered_exactly(core: Core) -> None:
    head = b'{"inputs": [{"name": "x", "shape": [6, 4], "datatype": "FP32", "parameters": ' \
        b'{"binary_data_size": 96}}],' + PAD + b'"outputs": [{"name": "y"}]}'
    body = head + ROWS.astype("<f4").tobytes()
    with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
        sock.sendall(request_head("/v2/models/demo/mlp/infer", len(body),
                                  f"Inference-Header-Content-Length: {len(head)}") + body)
        status, headers, answer = read_one_response(sock)
    assert (status, headers["connection"]) == (200, "close"), answer
    (out,) = json.loads(answer)["outputs"]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(out["shape"]), mlp_reference(ROWS), rtol=1e-6,
                               atol=1e-6)


def test_a_chunked_large_body_is_still_served_on_a_keep_alive_connection(core: Core) -> None:
    body = native_body()
    conn = http.client.HTTPConnection(*host_port(core), timeout=GIVE_UP_S)
    try:
        for _ in range(2):  # the same connection twice: chunked bodies are read by the server, not handed off
            conn.request("POST", f"/models/{MLP}/inference", body=iter([body[:70_000], body[70_000:]]),
                         encode_chunked=True, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = resp.read()
            assert (resp.status, resp.getheader("connection")) == (200, None), answer
            np.testing.assert_allclose(np.asarray(json.loads(answer)["outputs"]["y"]["data"]), mlp_reference(ROWS),
                                       rtol=1e-6, atol=1e-6)
    finally:
        conn.close()


def test_expect_100_continue_is_answered_before_the_helper_reads(core: Core) -> None:
    body = native_body()
    with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
        sock.sendall(request_head(f"/models/{MLP}/inference", len(body), "Expect: 100-continue"))
        sock.settimeout(GIVE_UP_S)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # nothing of the body sent yet
        sock.sendall(body)
        status, _, answer = read_one_response(sock)
    assert status == 200, answer


def test_a_large_body_that_stalls_gets_408_and_the_helper_serves_the_next(core: Core) -> None:
    body = native_body()
    with WellBehaved(core) as client:
        with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
            sock.sendall(request_head(f"/models/{MLP}/inference", len(body)) + body[: len(body) // 2])
            status, headers, error = json_error(read_until_closed(sock))  # nothing more for > 1 s
        assert (status, error["code"], headers["connection"]) == (408, "body_timeout", "close"), error
        helpers = helper_pids(core)
        assert helpers and post_large(core, body) == 200
        assert helper_pids(core) == helpers  # the same helper process: a stalled client did not cost it
    client.assert_served()


def test_a_client_that_hangs_up_mid_body_gets_nothing_and_costs_nothing(core: Core) -> None:
    body = native_body()
    with WellBehaved(core) as client:
        assert post_large(core, body) == 200
        helpers = helper_pids(core)
        for _ in range(3):
            with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
                sock.sendall(request_head(f"/models/{MLP}/inference", len(body)) + body[: len(body) // 3])
                time.sleep(0.2)  # handed off: the helper is waiting for the rest when the client leaves
        assert post_large(core, body) == 200
        assert helper_pids(core) == helpers
    client.assert_served()
    assert "parser process failed" not in core.log.read_text()


def test_a_client_trickling_its_body_does_not_hold_up_other_large_bodies(core: Core) -> None:
    body = native_body()
    with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as slow:
        slow.sendall(request_head(f"/models/{MLP}/inference", len(body)) + body[:1000])
        stop = threading.Event()

        def trickle() -> None:  # a byte every 0.5 s: inside the 1 s body timeout, for ever
            i = 1000
            while not stop.wait(0.5):
                slow.sendall(body[i : i + 1])
                i += 1

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.3)  # handed off: the helper is reading the trickle
            for _ in range(3):  # one after another, each answered while the trickler goes on
                assert post_large(core, body) == 200
            assert t.is_alive()
        finally:
            stop.set()
            t.join()


def test_bytes_after_the_body_do_not_cost_the_answer(core: Core) -> None:
    """A trailing CRLF (some clients send one after a POST body) and a pipelined request are still
    unread when the server closes; a plain close would reset the connection and the kernel drop
    the part of a large answer the client has not read yet."""
    texts = [" ".join(["The quick brown fox jumps over the lazy dog"] * 12)] * 16
    body = b'{"input": ' + PAD + json.dumps(texts).encode() + b"}"
    for trailer in (b"\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            sock.sendall(request_head(f"/models/{TEXT}/inference", len(body)) + body + trailer)
            time.sleep(1.5)  # the answer is written and the server has closed (or lingers) meanwhile
            status, headers, answer = read_one_response(sock)
        assert (status, headers["connection"]) == (200, "close")
        assert len(answer) > 1 << 20 and json.loads(answer)["outputs"]["last_hidden_state"]["shape"][0] == 16


def test_a_slow_upload_does_not_count_against_the_request_timeout(published: tuple[Settings, Path],
                                                                  tmp_path: Path) -> None:
    settings, _ = published
    body = native_body()
    with core_server(settings.publish_dir, tmp_path, "--request-timeout", "1", "--body-timeout", "5") as c:
        assert c.call("POST", "/models/register", {"model_id": MLP})[0] == 201
        with socket.create_connection(host_port(c), timeout=GIVE_UP_S) as sock:
            sock.sendall(request_head(f"/models/{MLP}/inference", len(body)) + body[:1000])
            for i in range(1000, len(body), len(body) // 4):  # about 2 s in all: twice the request timeout
                time.sleep(0.5)
                sock.sendall(body[i : i + len(body) // 4])
            status, _, answer = read_one_response(sock)
    assert status == 200, answer


def test_an_answer_before_100_continue_closes_the_connection(core: Core) -> None:
    """The client never sends a body it was not told to continue with; kept open, the connection
    would read its next request as that body."""
    with socket.create_connection(host_port(core), timeout=GIVE_UP_S) as sock:
        sock.sendall(request_head(f"/models/{MLP}/inference", 10 << 30, "Expect: 100-continue"))
        status, headers, error = read_one_response(sock)
        assert (status, json.loads(error)["code"], headers["connection"]) == (413, "body_too_large", "close")
        assert read_until_closed(sock) == b""
