"""Connection-level limits on top of uvicorn's httptools protocol.

uvicorn bounds none of these by itself: a client may take forever to send its request head
(slow-loris), send a head of any size (httptools concatenates a header value until it ends, so
200 MiB of one header is 200 MiB in memory), open more sockets than the process has descriptors,
or stop sending in the middle of a body. Here, per connection:

* **head**: the request line and headers must arrive within ``header_timeout_s`` of the
  connection opening (or of the first byte of a keep-alive request) and within
  ``max_header_bytes``; past either the client gets ``408`` / ``431`` and the connection closes.
  Bytes are handed to the parser only up to the cap, so an oversized head is never buffered.
* **body**: at most ``body_timeout_s`` between two pieces of a body (not counting time the
  application itself has not asked for more: uvicorn stops reading once 64 KiB wait unread);
  then ``408`` (if nothing was answered yet) and close. The application sees a disconnect.
* **connections**: beyond ``max_connections`` open connections a new one gets an immediate
  ``503`` with ``Retry-After`` and ``Connection: close``, and is closed; it never waits.
* keep-alive idle time is uvicorn's own ``timeout_keep_alive``.

**Large bodies bypass the event loop.** For a request with a ``Content-Length`` body (no TLS),
the application may call ``scope["extensions"][HAND_OFF]()``: reading on the connection stops and
it gets a :class:`HandedOffBody`: the bytes of the body that had already arrived and a duplicate
of the client socket, from which the parse helper process reads the rest itself (parse_helper.py).
60 MB then never cross the event loop or this process's CPU time (before, the loop read them in
64 KiB pieces and wrote them on to the helper: benchmarks/bench_hostile.py). The parser never
sees the rest of that body, so the connection closes after the answer.

Timers are armed lazily, only while a head or a body is incomplete at the end of a read: a
request that arrives in one piece (the usual case) costs no timer at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlos_core.errors import api_error_body

__all__ = ["HAND_OFF", "HandedOffBody", "LimitedHttpToolsProtocol", "Limits", "protocol_class", "raw_error_response"]

HAND_OFF = "mlos.body_hand_off"  # scope["extensions"] key: () -> HandedOffBody | None


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 << 10
    max_connections: int = 1024


@dataclass
class HandedOffBody:
    """A request body the event loop will not read: *received* (what had already arrived), then
    *remaining* more bytes to read from *fd* (a duplicate of the client socket, which the holder
    must close: ``close()``), with at most *timeout_s* between two pieces. ``client_gone()`` ends
    the request without an answer (the client hung up, or the body stopped coming)."""

    fd: int
    received: bytes
    remaining: int
    timeout_s: float
    client_gone: Callable[[], None] = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.received) + self.remaining

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class _LingeringClose:
    """A handed-off request's transport as its cycle sees it: ``close()`` lingers (see _linger)."""

    def __init__(self, transport: asyncio.Transport, linger: Callable[[], None]) -> None:
        self._transport = transport
        self.close = linger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def raw_error_response(status: int, reason: str, code: str, message: str, *extra: tuple[str, str]) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with the API's JSON error body."""
    body = api_error_body(status, code, message)
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_BUSY = raw_error_response(503, "Service Unavailable", "too_many_connections",
                           "the server is at its connection limit; retry shortly", ("retry-after", "1"))
_REFUSED_LINGER_S = 1.0  # a refused connection reads (and drops) the request for this long, so the 503 is not reset


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: Limits = Limits(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._in_head = True  # waiting for (the rest of) a request head
        self._in_body = False  # head done, body still arriving
        self._head_bytes = 0
        self._body_seen_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._over_cap = False  # refused at connect: never registered with the server
        self._done = False  # answered and closing: nothing more is parsed

    # --- connections ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's says BaseTransport; a TCP connection's is a Transport
        if len(self.connections) >= self.limits.max_connections:
            # Not registered with the server: answered, half-closed, dropped after a short linger
            # (or when the client closes) so that the request it sends meanwhile does not reset the 503.
            self._over_cap = True
            self.transport = transport
            transport.write(_BUSY)
            if transport.can_write_eof():
                transport.write_eof()
            self._timer = self.loop.call_later(_REFUSED_LINGER_S, transport.close)
            return
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self._over_cap:
            super().connection_lost(exc)

    # --- reading ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._over_cap or self._done:
            return
        if self._in_head:
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:  # feed only what fits: the head must end inside it
                self._head_bytes += room
                super().data_received(data[:room])
                if self.transport.is_closing():  # unparsable: uvicorn answered 400
                    return
                if self._in_head:
                    self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                                 f"the request head exceeds {self.limits.max_header_bytes} bytes")
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        if data:
            super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_body:
            self._body_seen_at = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        elif self._in_head and self._head_bytes and self._timer is None:
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._cancel_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # checked only if called: nothing per request
            extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
            extensions[HAND_OFF] = functools.partial(self._hand_off_body, cycle)

    def on_message_complete(self) -> None:
        if self.cycle is not None:  # the whole body came: nothing to hand off, and no cycle through the scope
            self.cycle.scope.get("extensions", {}).pop(HAND_OFF, None)
        self._in_body = False
        self._in_head = True
        self._head_bytes = 0
        if self._timer is not None:
            self._cancel_timer()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """Unparsable HTTP: the same JSON error shape as every other answer (uvicorn writes text)."""
        self.transport.write(raw_error_response(400, "Bad Request", "bad_http", msg))
        self.transport.close()

    # --- large bodies read elsewhere ---------------------------------------------------------------

    @staticmethod
    def _content_length(raw: Iterable[tuple[bytes, bytes]]) -> int | None:
        """The body's length when it can be handed off: one Content-Length, no Transfer-Encoding."""
        headers = list(raw)
        lengths = [v for k, v in headers if k == b"content-length"]
        if len(lengths) != 1 or not lengths[0].isdigit() or any(k == b"transfer-encoding" for k, _ in headers):
            return None
        return int(lengths[0])

    def _hand_off_body(self, cycle: Any) -> HandedOffBody | None:
        """Stop reading this connection and give the rest of the current body to whoever calls this
        (once, before the application has read any of it); None when it cannot be (anymore, or
        at all: no single Content-Length, or TLS)."""
        if cycle is not self.cycle or not cycle.more_body or cycle.disconnected or self._done \
                or self.transport.is_closing():
            return None
        declared = self._content_length(cycle.scope["headers"])
        sock = self.transport.get_extra_info("socket")
        if declared is None or sock is None or self.transport.get_extra_info("sslcontext") is not None:
            return None
        received = bytes(cycle.body)
        remaining = declared - len(received)
        if remaining <= 0:
            return None
        fd = os.dup(sock.fileno())
        self.flow.pause_reading()
        if cycle.waiting_for_100_continue:  # what receive() would have sent before the first read
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        cycle.body = bytearray()
        cycle.keep_alive = False  # the parser never sees the rest of this body: close after the answer
        cycle.transport = cast(asyncio.Transport, _LingeringClose(self.transport, self._linger))  # duck-typed
        cycle.scope.get("extensions", {}).pop(HAND_OFF, None)  # once; and no cycle through the scope
        self._done = True
        self._in_body = False
        self._cancel_timer()
        return HandedOffBody(fd, received, remaining, self.limits.body_timeout_s,
                             functools.partial(self._hand_off_ended, cycle))

    def _linger(self) -> None:
        """Close after a handed-off request's answer without losing it: whatever the client still
        sends (a pipelined request, a trailing CRLF) would make close() reset the connection and
        the kernel drop the answer not yet sent. Half-close, read and drop until the client closes
        too, or for at most a second."""
        if self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # data_received drops it all (_done)
        self._cancel_timer()
        self._timer = self.loop.call_later(_REFUSED_LINGER_S, self.transport.close)

    def _hand_off_ended(self, cycle: Any) -> None:
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    # --- limits -----------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        self._done = True
        self._cancel_timer()
        if self._idle_between_requests():  # never interleave with a pipelined response being written
            self.transport.write(raw_error_response(status, reason, code, message))
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408, "Request Timeout", "header_timeout",
                         f"the request head did not arrive within {self.limits.header_timeout_s:g} s")
        else:  # a connection that never sent anything is closed without an answer
            self._done = True
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        quiet = self.loop.time() - self._body_seen_at
        if quiet < self.limits.body_timeout_s or self.flow.read_paused:
            # data came since, or the application has not asked for more yet: not the client's delay
            wait = self.limits.body_timeout_s - quiet if not self.flow.read_paused else self.limits.body_timeout_s
            self._timer = self.loop.call_later(max(wait, 0.01), self._body_timed_out)
            return
        cycle = self.cycle
        answer = cycle is not None and not cycle.response_started
        if cycle is not None:  # the application's receive() now says http.disconnect; its send() does nothing
            cycle.disconnected = True
            cycle.message_event.set()
        self._done = True
        if answer:
            self.transport.write(raw_error_response(408, "Request Timeout", "body_timeout",
                                                    f"no request body data for {self.limits.body_timeout_s:g} s"))
        self.transport.close()


def protocol_class(limits: Limits) -> Any:
    """What uvicorn's ``Config(http=...)`` takes: it calls it like a protocol class. A partial of
    a module-level class pickles, so it also reaches ``--workers`` processes (spawned)."""
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)
