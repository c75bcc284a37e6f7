"""One listening socket per worker process, all on one port (``SO_REUSEPORT``), for ``--workers N``.

With one socket shared by every worker (what ``uvicorn --workers`` does) the kernel wakes the
workers for a new connection and the first one awake accepts everything pending: a burst of
keep-alive clients all lands on one worker and stays there (measured: one core busy, throughput
bimodal). With ``SO_REUSEPORT`` each worker listens on a socket of its own and the kernel hashes
every new connection onto one of them, so connections spread over the workers from the first
SYN and no worker can take another's.

The parent holds the port with a :class:`PortReservation`: bound with ``SO_REUSEPORT`` but never
listening (so no connection ever waits on it). uvicorn hands the sockets it is given to each
worker it starts (spawned, so pickled); a reservation pickles as "listen on this port", and each
worker, a restarted one included, unpickles it into its own listening socket. The kernel only
groups sockets of one user under a port, so no other user's process can join and take
connections.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["PortReservation", "listeners", "listening_socket"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _reuseport_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def listening_socket(family: int, host: str, port: int, backlog: int) -> socket.socket:
    """A socket of this process's own listening on *host*:*port* among the port's other ones."""
    sock = _reuseport_socket(family)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class PortReservation(socket.socket):
    """The parent's hold on the port (bound, not listening); what a worker receives of it is a
    listening socket of its own on the same port."""

    backlog = 2048

    @classmethod
    def bind_port(cls, host: str, port: int, backlog: int) -> PortReservation:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = cls(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))  # port 0: the kernel picks one, and the workers take the same
        except BaseException:
            sock.close()
            raise
        sock.backlog = backlog
        return sock

    def __reduce__(self) -> tuple[Any, tuple[int, str, int, int]]:
        host, port = self.getsockname()[:2]
        return listening_socket, (int(self.family), host, port, self.backlog)


def listeners(port: int) -> int | None:
    """How many sockets listen on *port* (this network namespace, /proc/net/tcp and tcp6): the
    parent knows every worker is accepting when all their sockets are there. None where /proc
    does not say."""
    count, seen = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _LISTEN and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                count += 1
    return count if seen else None
