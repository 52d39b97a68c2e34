"""The worker side of the Gearman binary protocol.

Packets are a 12-byte header (magic, type, body size; big-endian) and a body
of NUL-separated arguments. The reader parses with struct straight out of
what recv() returned, copying only when a packet spans two reads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = HEADER.size
MAX_BODY = 1 << 30

CAN_DO = 1
CANT_DO = 2
JOB_CREATED = 8
PRE_SLEEP = 4
NOOP = 6
NO_JOB = 10
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB = 7
SUBMIT_JOB_BG = 18
SUBMIT_JOB_HIGH_BG = 32
SUBMIT_JOB_LOW_BG = 34
ERROR = 19
SET_CLIENT_ID = 22
WORK_DATA = 28
WORK_WARNING = 29
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31


class ProtocolError(Exception):
    """gearmand sent something that is not a Gearman response."""


def request(kind: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return HEADER.pack(REQ, kind, len(body)) + body


def work_complete(handle: bytes, result: bytes) -> bytes:
    """request(WORK_COMPLETE, handle, result) in one copy: every job's answer."""
    return b"".join((HEADER.pack(REQ, WORK_COMPLETE, len(handle) + 1 + len(result)), handle, b"\0", result))


# What wakes a child that sleeps between jobs: gearmand's NO_JOB to its
# GRAB and the NOOP after it, in one read (see session.py, GRAB_THEN_SLEEP).
NO_JOB_THEN_NOOP = HEADER.pack(RES, NO_JOB, 0) + HEADER.pack(RES, NOOP, 0)
WAKE_UP_SIZE = len(NO_JOB_THEN_NOOP)
WOKEN = ((NO_JOB, b""), (NOOP, b""))  # feed_received returns this very object: `is` tells it


class PacketReader:
    """Turns the bytes of one connection into (type, body) packets."""

    __slots__ = ("_need", "pending")

    def __init__(self) -> None:
        self.pending = bytearray()  # the start of a packet that the next read continues
        self._need = HEADER_SIZE

    def feed_received(self, view: memoryview, size: int) -> Sequence[tuple[int, bytes]]:
        """The SIZE bytes one recv_into(VIEW) returned. The usual read holds
        whole packets only (a JOB_ASSIGN; a NO_JOB and the NOOP after it; a
        NOOP) with nothing pending: those are cut straight out of the
        receive buffer, without copying the read first, and the wake-up
        (NO_JOB and NOOP) is one comparison."""
        if self.pending:
            return self.feed(view[:size].tobytes())
        if size == WAKE_UP_SIZE and view[:size] == NO_JOB_THEN_NOOP:  # first: the one read before every job
            return WOKEN
        if size >= HEADER_SIZE:  # the usual read: one whole packet (else the general case below)
            magic, kind, length = HEADER.unpack_from(view, 0)
            if HEADER_SIZE + length == size and magic == RES:
                return [(kind, bytes(view[HEADER_SIZE:size]))]
        return self._packets(view, size)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.pending:
            self.pending += data
            if len(self.pending) < self._need:
                return []
            data = bytes(self.pending)
            self.pending = bytearray()
        return self._packets(data, len(data))

    def _packets(self, data: bytes | memoryview, end: int) -> list[tuple[int, bytes]]:
        """The whole packets in DATA[:END]; the start of one cut short is kept
        for the next read."""
        packets = []
        unpack = HEADER.unpack_from
        pos = 0
        need = HEADER_SIZE
        while end - pos >= HEADER_SIZE:
            magic, kind, size = unpack(data, pos)
            if magic != RES or size > MAX_BODY:
                raise ProtocolError(f"bad packet header {bytes(data[pos:pos + HEADER_SIZE])!r}")
            stop = pos + HEADER_SIZE + size
            if stop > end:
                need = stop - pos
                break
            packets.append((kind, bytes(data[pos + HEADER_SIZE:stop])))  # bytes of bytes: no copy
            pos = stop
        if pos < end:
            self.pending = bytearray(data[pos:end])
            self._need = need
        return packets
