"""Sockets a child inherits from a thread of its master.

A thread that connects at the moment of a fork leaves the child a copy of a
socket that its own objects do not know of yet (redis-py assigns the socket
to its connection only once connect() returns). The child must not keep it:
the master's peer would see a second holder, and the child's copy keeps the
connection alive after the master closes it. Such a socket is found by its
peer and replaced, in place, with /dev/null: the descriptor number stays
taken, so an object that closes it later closes /dev/null, never a file the
child opened since under the same number.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Collection

Peer = tuple[str, int] | str  # (address, port) of a TCP peer, or a Unix socket's path


def peers_of(host: str | None, port: int | None, path: str | None) -> frozenset[Peer]:
    """The addresses a connection to HOST:PORT (or to PATH) may have as its peer."""
    if path:
        return frozenset({path})
    if not host or not port:
        return frozenset()
    with contextlib.suppress(OSError, UnicodeError):
        return frozenset((str(info[4][0]), port) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    return frozenset()


def blank_sockets_to(peers: Collection[Peer]) -> int:
    """Replace every socket of ours whose peer is in PEERS with /dev/null; how many."""
    if not peers:
        return 0
    blanked = 0
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in _socket_fds():
            if fd != null and _peer(fd) in peers:
                os.dup2(null, fd)
                blanked += 1
    finally:
        os.close(null)
    return blanked


def _socket_fds() -> list[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.append(int(name))
    return found


def _peer(fd: int) -> Peer | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        address = sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()
    if isinstance(address, tuple):
        return (address[0], address[1])
    return address if isinstance(address, str) and address else None
