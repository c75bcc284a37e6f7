"""Large request bodies are parsed and validated in a helper process, not on the event loop.

Not on a thread either: orjson and numpy hold the GIL for a whole call, so a thread parsing 60 MB
of JSON numbers (about a second: 12 M Python objects) stops the event loop as surely as parsing
on it. Nor through ``ProcessPoolExecutor``: it pickles the body (a 60 MB copy with the GIL held)
and, in Python 3.11, its queue feeder keeps the last pickled message alive (+58 MiB RSS).

Here the server keeps the body in the pieces it arrived in, writes them to a Unix socket shared
with ``python -m mlos_core.parse_helper`` (the event loop stays free: non-blocking writes of the
pieces as they are), and gets back the validated request (numpy arrays, texts) or the ApiError.
One helper per server process, started at the first large body, one body at a time, its cyclic
GC off and its CPU priority lowest (nice 19: parsing a huge body is background work, inference threads
come first); it exits when the server's end of the socket closes.

Frames, both ways: an 8-byte little-endian length, then a pickle (parent to helper also: an
8-byte body length and the body).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from mlos_core.errors import ApiError
from mlos_core.fastpath import LARGE_BODY_BYTES, release_memory

__all__ = ["LargeBodies"]

log = logging.getLogger("mlos_core.app")

T = TypeVar("T")
_LEN = struct.Struct("<Q")


class LargeBodies:
    """``parse(chunks, fn, *args)`` is ``fn(body, *args)``: here for a small body, else in the helper."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def parse(self, chunks: list[bytes], fn: Callable[..., T], *args: Any) -> T:
        """A large body's *chunks* are consumed (the list is emptied once they are sent)."""
        size = len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))
        if size <= LARGE_BODY_BYTES:
            return fn(chunks[0] if len(chunks) == 1 else b"".join(chunks), *args)
        async with self._lock:  # one body at a time through the helper
            try:
                reader, writer = await self._connect()
                head = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
                writer.write(_LEN.pack(len(head)) + head + _LEN.pack(size))
                writer.writelines(chunks)
                chunks.clear()  # the transport holds what it has not sent yet; nothing else keeps them
                await writer.drain()
                answer = await reader.readexactly(_LEN.unpack(await reader.readexactly(_LEN.size))[0])
                status, value = pickle.loads(answer)
            except BaseException as exc:  # a helper that died, or this request cancelled mid-exchange
                self.close()
                if not isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError)):
                    raise
                log.error("the large-body parser process failed (%s); a new one starts with the next large body",
                          type(exc).__name__)
                raise ApiError(503, "busy", "the request could not be parsed now; retry shortly",
                               headers={"Retry-After": "1"}) from None
        if status == "ok":
            return value  # type: ignore[no-any-return]
        try:  # raised without a local keeping it: exception -> traceback -> this frame -> exception
            raise value if status == "error" else RuntimeError(f"parsing a large body failed in the helper: {value}")
        finally:
            del value

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._stream is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with theirs:
                self._proc = subprocess.Popen([sys.executable, "-m", "mlos_core.parse_helper", str(theirs.fileno())],
                                              pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            self._stream = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None


# --- the helper process ----------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    import importlib

    for name in ("mlos_core.app", "mlos_core.kserve"):  # what the requests name: imported before the first one
        importlib.import_module(name)
    inp, out = sock.makefile("rb"), sock.makefile("wb")
    while header := inp.read(_LEN.size):
        fn, args = pickle.loads(inp.read(_LEN.unpack(header)[0]))
        body = inp.read(_LEN.unpack(inp.read(_LEN.size))[0])
        try:
            answer: tuple[str, Any] = ("ok", fn(body, *args))
        except ApiError as exc:
            answer = ("error", exc)
        except Exception as exc:  # a bug: the server logs it and answers 500
            answer = ("crash", f"{type(exc).__name__}: {exc}")
        del body
        payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        del answer
        out.write(_LEN.pack(len(payload)))
        out.write(payload)
        out.flush()
        del payload
        gc.collect()
        release_memory()


def main() -> None:
    gc.disable()  # nothing a parse makes has cycles; collected after each request
    with contextlib.suppress(OSError):
        os.nice(19)  # below everything else: a huge body is parsed with what the cores have left
    with socket.socket(fileno=int(sys.argv[1])) as sock, \
            contextlib.suppress(OSError, EOFError, struct.error, pickle.UnpicklingError):
        _serve(sock)  # returns (or fails on a cut-off frame) when the server's end closes


if __name__ == "__main__":
    main()
