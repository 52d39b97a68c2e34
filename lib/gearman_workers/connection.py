"""A child's connection to one gearmand: a non-blocking connect, reconnects
with back-off, blocking sends and receives bounded by a timeout, and the
packet reader. What the connection is *for* (registering, grabbing jobs)
is the session's business (session.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence

from . import protocol as p
from .backoff import Backoff
from .config import Server

log = logging.getLogger("gearman_workers.child")

# Short: a gearmand that comes back is used again within about a second,
# whatever the outage's length. Refused connects cost next to nothing.
RECONNECT_FIRST, RECONNECT_MAX = 0.05, 0.5

DOWN, CONNECTING, UP = 0, 1, 2

# While dozing, a lone NO_JOB (a bare 12-byte header) does not make the
# socket readable; a NO_JOB with the NOOP after it, a JOB_ASSIGN (its body
# holds a handle, a function name and three NULs), an ERROR (a code and a
# text) or the connection's end all do.
DOZING_LOW_WATER = p.HEADER_SIZE + 1
# A dozing socket's blocking read gives up after this long: the child waits
# for its next job in the read itself, not in poll (see Worker._wait_dozing),
# and says "idle" when nothing came by then.
DOZING_TIMEOUT = 0.05


class _NothingRead(tuple):
    """What receive() returns when its timeout passed: no packets, and told apart by `is`."""


NOTHING_READ: Sequence[tuple[int, bytes]] = _NothingRead()


class ConnectionLost(Exception):
    """The connection is gone; the text says why."""


class DescriptorsClosed(Exception):
    """Task code closed this child's socket under it (os.closerange, say):
    the child cannot answer its job and must leave, so that the job counts
    against the task (poison.py) instead of being taken and lost again."""


def _timeval(seconds: float) -> bytes:
    """SECONDS as the struct timeval that SO_RCVTIMEO and SO_SNDTIMEO take."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _lost(err: OSError, doing: str) -> Exception:
    if err.errno == errno.EBADF:
        return DescriptorsClosed(f"{doing} failed: task code closed the child's gearmand socket")
    return ConnectionLost(f"{doing} failed: {err.strerror or err}")


class GearmandConnection:
    __slots__ = (
        "awake_timeout",
        "backoff",
        "connect_deadline",
        "connect_timeout",
        "down_since",
        "dozing_timeout",
        "index",
        "reader",
        "retry_at",
        "server",
        "sock",
        "status",
    )

    def __init__(self, server: Server, index: int, connect_timeout: float) -> None:
        self.server = server
        self.index = index  # position in the pool's server list (names the server in the scoreboard)
        self.connect_timeout = connect_timeout
        # SO_RCVTIMEO (and awake SO_SNDTIMEO) as setsockopt takes them: see finish_connect and doze.
        self.awake_timeout, self.dozing_timeout = _timeval(connect_timeout), _timeval(DOZING_TIMEOUT)
        self.sock: socket.socket | None = None
        self.reader = p.PacketReader()
        self.status = DOWN
        self.backoff = Backoff(RECONNECT_FIRST, RECONNECT_MAX)
        self.retry_at = 0.0
        self.connect_deadline = 0.0
        self.down_since: float | None = None

    def start_connect(self) -> socket.socket:
        """Begin a non-blocking connect; the socket becomes writable when done."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.server.host, self.server.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise ConnectionLost(os.strerror(code))
        self.sock, self.status = sock, CONNECTING
        self.connect_deadline = time.monotonic() + self.connect_timeout
        return sock

    def finish_connect(self) -> None:
        """The connect completed (or failed): make the socket ready for use."""
        assert self.sock is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise ConnectionLost(os.strerror(code))
        sock = self.sock
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking sends and receives, but never forever: a gearmand that
        # stays silent for connect_timeout while it owes us an answer is gone.
        timeout = self.awake_timeout
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        self.status = UP
        self.reader = p.PacketReader()
        if self.down_since is not None:
            log.info("reconnected to gearmand %s after %.1f s", self.server, time.monotonic() - self.down_since)
        self.down_since = None
        self.backoff.reset()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)  # type: ignore[union-attr]  # connected: sock is set; a check would cost every job
        except OSError as err:
            raise _lost(err, "send") from None

    def receive(self, buffer: bytearray, view: memoryview) -> Sequence[tuple[int, bytes]]:
        """The packets read (blocking); none when nothing came before the
        socket's receive timeout (connect_timeout, or dozing DOZING_TIMEOUT)."""
        try:
            size = self.sock.recv_into(buffer)  # type: ignore[union-attr]  # connected: sock is set; a check would cost every job
        except BlockingIOError:
            return NOTHING_READ
        except OSError as err:
            raise _lost(err, "receive") from None
        if not size:
            raise ConnectionLost("connection closed by gearmand")
        try:
            return self.reader.feed_received(view, size)
        except p.ProtocolError as err:
            raise ConnectionLost(str(err)) from None

    def peek_woken(self, buffer: bytearray, view: memoryview) -> bool | None:
        """Whether the bytes waiting begin with gearmand's wake-up (NO_JOB
        and NOOP), which stays in the socket until skip_woken(). Waits for
        bytes if none are there: None when nothing that wakes a dozing
        child came before the socket's receive timeout (DOZING_TIMEOUT):
        no bytes, or a lone NO_JOB below the low-water mark.

        Why answer before reading: the read that empties the socket makes
        Linux acknowledge the two small segments it took (the lone NO_JOB
        the child dozed through, then the NOOP) at once, and on loopback
        that bare ACK is delivered inside our recv, before our GRAB can go
        out (bench/hops: several microseconds of every job's wake-up).
        Peeked, the wake-up is answered first and the GRAB carries the ACK."""
        if self.reader.pending:
            return False  # the bytes waiting continue a packet
        try:
            size = self.sock.recv_into(buffer, p.WAKE_UP_SIZE, socket.MSG_PEEK)  # type: ignore[union-attr]  # connected: sock is set
        except BlockingIOError:
            return None
        except OSError as err:
            raise _lost(err, "receive") from None
        if size == p.WAKE_UP_SIZE:
            return view[:size] == p.NO_JOB_THEN_NOOP
        return None if 0 < size < DOZING_LOW_WATER else False

    def skip_woken(self, buffer: bytearray) -> None:
        """Read the wake-up that peek_woken() found, once it is answered."""
        try:
            size = self.sock.recv_into(buffer, p.WAKE_UP_SIZE)  # type: ignore[union-attr]  # connected: sock is set
        except OSError as err:
            raise _lost(err, "receive") from None
        if size != p.WAKE_UP_SIZE:  # peeked bytes stay until read: only a reset takes them
            raise ConnectionLost("connection reset before the wake-up was read")

    def doze(self) -> None:
        """After GRAB and PRE_SLEEP went out together: the usual answer, a
        lone NO_JOB, needs nothing from us, so it should not wake us. Raise
        the socket's low-water mark until the next read (undoze): the child
        then wakes once per job, for the NO_JOB and the NOOP together.
        A blocking read waits DOZING_TIMEOUT at most: what the child waits
        in while dozing (see peek_woken)."""
        self._set_low_water(DOZING_LOW_WATER, self.dozing_timeout)

    def undoze(self) -> None:
        self._set_low_water(1, self.awake_timeout)

    def _set_low_water(self, size: int, timeout: bytes) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)  # type: ignore[union-attr]  # connected: sock is set
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)  # type: ignore[union-attr]
        except OSError as err:
            raise _lost(err, "setsockopt") from None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):  # EBADF: task code closed it first
                self.sock.close()
        self.sock, self.status = None, DOWN

    def schedule_retry(self, reason: str) -> None:
        """After close(): when to try again; logs once per outage."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning("gearmand %s unreachable (%s); reconnecting in the background", self.server, reason)
        self.retry_at = now + self.backoff.next()

    def connect_overdue(self, now: float) -> bool:
        return self.status == CONNECTING and now > self.connect_deadline

    def __str__(self) -> str:
        return str(self.server)
