"""Large request bodies are parsed and validated in a helper process, not on the event loop.

Not on a thread either: orjson and numpy hold the GIL for a whole call, so a thread parsing 60 MB
of JSON numbers (about a second: 12 M Python objects) stops the event loop as surely as parsing
on it. Nor through ``ProcessPoolExecutor``: it pickles the body (a 60 MB copy with the GIL held)
and, in Python 3.11, its queue feeder keeps the last pickled message alive (+58 MiB RSS).

Here a Content-Length body is not read by the server at all: the connection hands it off
(protocol.py) and the helper gets a duplicate of the client socket (SCM_RIGHTS, on a second Unix
socket) with the bytes that had already arrived, and reads the rest itself, into one buffer (at
most ``timeout_s`` between two pieces: then 408; a client that hangs up gets no answer). A chunked
body (or one over TLS) is read by the server and its pieces written to the helper's socket
(non-blocking writes of the pieces as they are). Either way the server gets back the validated
request (numpy arrays, texts) or the ApiError.
One helper per server process, started at the first large body, reading bodies side by side and
parsing one at a time, its cyclic GC off and its CPU priority lowest (SCHED_IDLE: parsing a huge
body is background work, inference threads come first, so under full load large bodies wait); it
exits when the server's end of the socket closes.

Frames, both ways: an 8-byte little-endian length, then a pickle. Parent to helper, the pickle is
``(id, fn, args, socket)``, and an 8-byte length and the body (or what had arrived of it) follow;
*socket* is None, or ``(remaining bytes, timeout_s)`` when the client socket was sent first (with
the id, on the second socket). Helper to parent: ``(id, status, value)``, in the order requests
finish: bodies are read side by side (a trickling client holds only its own request, never the
others'), parsed one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import mmap
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mlos_core.errors import ApiError
from mlos_core.fastpath import release_memory
from mlos_core.protocol import HandedOffBody
from mlos_core.wire import LARGE_BODY_BYTES, Body, ClientGone

__all__ = ["LargeBodies"]

log = logging.getLogger("mlos_core.app")

T = TypeVar("T")
_LEN = struct.Struct("<Q")
_ID = struct.Struct("<Q")  # a request's id, with its client socket


class LargeBodies:
    """``parse(chunks, fn, *args)`` is ``fn(body, *args)``: here for a small body, else in the helper."""

    def __init__(self) -> None:
        self._write_lock = asyncio.Lock()  # one request frame at a time on the socket
        self._proc: subprocess.Popen[bytes] | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._fds: socket.socket | None = None  # client sockets go to the helper on this one
        self._answers: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[str, Any]]] = {}
        self._ids = itertools.count()

    async def parse(self, body: Body, fn: Callable[..., T], *args: Any) -> T:
        """``fn(body bytes, *args)``. A large body is consumed: a list of chunks is emptied once
        they are sent, a handed-off socket is closed here once the helper has its own.

        The helper reads handed-off bodies side by side (a client that trickles its body holds
        only its own request) and parses one at a time."""
        if isinstance(body, HandedOffBody):
            pieces, size = [body.received], body.size
        else:
            pieces, size = body, (len(body[0]) if len(body) == 1 else sum(map(len, body)))
            if size <= LARGE_BODY_BYTES:
                return fn(body[0] if len(body) == 1 else b"".join(body), *args)
        rid = next(self._ids)
        answer: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = answer
        writing = False
        try:
            async with self._write_lock:
                writing = True
                writer = await self._connect()
                source = None
                if isinstance(body, HandedOffBody):
                    assert self._fds is not None
                    socket.send_fds(self._fds, [_ID.pack(rid)], [body.fd])  # non-blocking; the helper takes each
                    body.close()
                    source = (body.remaining, body.timeout_s)
                head = pickle.dumps((rid, fn, args, source), protocol=pickle.HIGHEST_PROTOCOL)
                writer.write(_LEN.pack(len(head)) + head + _LEN.pack(sum(map(len, pieces))))
                writer.writelines(pieces)
                pieces.clear()  # the transport holds what it has not sent yet; nothing else keeps them
                await writer.drain()
                writing = False
            status, value = await answer
        except BaseException as exc:  # a helper that died, or this request cancelled mid-frame
            if writing:  # a frame cut short: the helper cannot read the next one
                self.close()
            if not isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError)):
                raise
            log.error("the large-body parser process failed (%s); a new one starts with the next large body",
                      type(exc).__name__)
            raise ApiError(503, "busy", "the request could not be parsed now; retry shortly",
                           headers={"Retry-After": "1"}) from None
        finally:
            self._waiting.pop(rid, None)
        if status == "ok":
            result: T = value  # unpickled: what fn returned in the helper
            return result
        if status == "gone" and isinstance(body, HandedOffBody):
            body.client_gone()
            raise ClientGone
        if status == "timeout" and isinstance(body, HandedOffBody):
            raise ApiError(408, "body_timeout", f"no request body data for {body.timeout_s:g} s")
        try:  # raised without a local keeping it: exception -> traceback -> this frame -> exception
            raise value if status == "error" else RuntimeError(f"parsing a large body failed in the helper: {value}")
        finally:
            del value

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        """Each answer frame to the request waiting for it; when the helper goes, every waiting one fails."""
        try:
            while True:
                frame = await reader.readexactly(_LEN.unpack(await reader.readexactly(_LEN.size))[0])
                rid, status, value = pickle.loads(frame)
                waiting = self._waiting.get(rid)
                if waiting is not None and not waiting.done():
                    waiting.set_result((status, value))
                del frame, value
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
            self._answers = None
            self.close()  # the next large body starts a new helper
            failure = EOFError(f"the parse helper went away ({type(exc).__name__})")
        except asyncio.CancelledError:
            failure = EOFError("the parse helper was stopped")
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(failure)

    async def _connect(self) -> asyncio.StreamWriter:
        if self._stream is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds_ours, fds_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with theirs, fds_theirs:
                passed = (theirs.fileno(), fds_theirs.fileno())
                self._proc = subprocess.Popen([sys.executable, "-m", "mlos_core.parse_helper", *map(str, passed)],
                                              pass_fds=passed, stdin=subprocess.DEVNULL)
            fds_ours.setblocking(False)
            self._fds = fds_ours
            self._stream = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
            self._answers = asyncio.get_running_loop().create_task(self._read_answers(self._stream[0]))
        return self._stream[1]

    def close(self) -> None:
        if self._answers is not None:
            self._answers.cancel()
            self._answers = None
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
        if self._fds is not None:
            self._fds.close()
            self._fds = None
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None


# --- the helper process ----------------------------------------------------------------------------------


class _BodyEnded(Exception):
    """The client closed (or reset) its connection before the whole body came."""


def _read_rest(client: socket.socket, received: bytes, remaining: int, timeout_s: float) -> bytes:
    """The whole body: *received*, then *remaining* bytes from *client* (closed here)."""
    size = len(received) + remaining
    # An anonymous map, not bytearray(size): its pages cost memory only as bytes arrive, so a head
    # that declares 60 MB and sends nothing costs nothing.
    with client, mmap.mmap(-1, size) as buf, memoryview(buf) as view:
        view[: len(received)] = received
        pos = len(received)
        # A timeout keeps the socket non-blocking; never setblocking(True): O_NONBLOCK is a flag of
        # the open file, which the server's event loop shares and writes the answer through.
        client.settimeout(timeout_s)
        while pos < size:
            try:
                n = client.recv_into(view[pos:])
            except TimeoutError:
                raise
            except OSError:  # reset, or any other end of this connection: not the helper's end
                n = 0
            if n == 0:
                raise _BodyEnded
            pos += n
        return bytes(view)


def _serve(sock: socket.socket, fds: socket.socket) -> None:
    """Requests in order from the server; each in its own thread (at most MAX_LARGE_BODIES at once:
    the server's slots), which reads its client socket if it has one, then parses under one lock."""
    import importlib

    # what the requests name: imported before the first one
    for name in ("mlos_core.native_api", "mlos_core.kserve", "mlos_core.openai_api", "mlos_core.rerank_api"):
        importlib.import_module(name)
    inp, out = sock.makefile("rb"), sock.makefile("wb")
    parsing, writing = threading.Lock(), threading.Lock()

    def handle(rid: int, fn: Callable[..., Any], args: tuple[Any, ...], body: bytes, client: socket.socket | None,
               source: tuple[int, float] | None) -> None:
        try:
            if client is not None and source is not None:
                body = _read_rest(client, body, *source)
            with parsing:
                answer: tuple[str, Any] = ("ok", fn(body, *args))
        except _BodyEnded:
            answer = ("gone", None)
        except TimeoutError:
            answer = ("timeout", None)
        except ApiError as exc:
            answer = ("error", exc)
        except Exception as exc:  # a bug: the server logs it and answers 500
            answer = ("crash", f"{type(exc).__name__}: {exc}")
        del body
        payload = pickle.dumps((rid, *answer), protocol=pickle.HIGHEST_PROTOCOL)
        del answer
        with writing:
            out.write(_LEN.pack(len(payload)))
            out.write(payload)
            out.flush()
        del payload
        with parsing:
            gc.collect()
            release_memory()

    while header := inp.read(_LEN.size):
        rid, fn, args, source = pickle.loads(inp.read(_LEN.unpack(header)[0]))
        body = inp.read(_LEN.unpack(inp.read(_LEN.size))[0])
        client = None
        if source is not None:  # its client socket came first, on the other socket, in the same order
            data, passed, _, _ = socket.recv_fds(fds, _ID.size, 1)
            if len(passed) != 1 or data != _ID.pack(rid):
                raise EOFError(f"expected the client socket of request {rid}, got {len(passed)} descriptor(s)")
            client = socket.socket(fileno=passed[0])
        threading.Thread(target=handle, args=(rid, fn, args, body, client, source), daemon=True).start()
        del body


def main() -> None:
    gc.disable()  # nothing a parse makes has cycles; collected after each request
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
        # SCHED_IDLE (Linux): a waking inference thread preempts the parse at once; at nice 19 alone
        # it may wait for the next scheduler tick (measured: inference p99 under a 60 MB body a
        # second 1.3-1.6x unloaded with it, 2.7-2.8x without)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with socket.socket(fileno=int(sys.argv[1])) as sock, socket.socket(fileno=int(sys.argv[2])) as fds, \
            contextlib.suppress(OSError, EOFError, struct.error, pickle.UnpicklingError):
        _serve(sock, fds)  # returns (or fails on a cut-off frame) when the server's end closes


if __name__ == "__main__":
    main()
