"""The Gearman wire pieces: packets and results, no server."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from gearman_workers import protocol as p
from gearman_workers.config import Server
from gearman_workers.connection import DOZING_TIMEOUT, NOTHING_READ, UP, ConnectionLost, GearmandConnection
from gearman_workers.job import TaskResultError, encode_result


def test_packet_reader_handles_split_and_joined_packets() -> None:
    packets = p.HEADER.pack(p.RES, p.NOOP, 0) + p.HEADER.pack(p.RES, p.JOB_ASSIGN_UNIQ, 9) + b"H:1\0f\0u\0d"
    for cut in range(len(packets) + 1):
        reader = p.PacketReader()
        got = reader.feed(packets[:cut]) + reader.feed(packets[cut:])
        assert got == [(p.NOOP, b""), (p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    with pytest.raises(p.ProtocolError):
        p.PacketReader().feed(b"\0REQ" + b"\0" * 8)


def test_packet_reader_takes_one_whole_read_as_is_and_falls_back_otherwise() -> None:
    assign = p.HEADER.pack(p.RES, p.JOB_ASSIGN_UNIQ, 9) + b"H:1\0f\0u\0d"
    noop = p.HEADER.pack(p.RES, p.NOOP, 0)
    buffer = bytearray(64)
    view = memoryview(buffer)

    def received(reader: p.PacketReader, data: bytes) -> list[tuple[int, bytes]]:
        buffer[:len(data)] = data
        return list(reader.feed_received(view, len(data)))

    assert received(p.PacketReader(), assign) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    assert received(p.PacketReader(), noop + assign) == [(p.NOOP, b""), (p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    reader = p.PacketReader()
    assert received(reader, assign[:5]) == []
    assert received(reader, assign[5:]) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    reader = p.PacketReader()
    assert received(reader, noop + assign[:15]) == [(p.NOOP, b"")]
    assert received(reader, assign[15:] + noop) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d"), (p.NOOP, b"")]
    with pytest.raises(p.ProtocolError):
        received(p.PacketReader(), noop + b"\0REQ" + b"\0" * 8)
    # The wake-up of a child that sleeps between jobs, and reads of its size that are not it.
    no_job = p.HEADER.pack(p.RES, p.NO_JOB, 0)
    assert received(p.PacketReader(), no_job + noop) == [(p.NO_JOB, b""), (p.NOOP, b"")]
    assert received(p.PacketReader(), no_job + no_job) == [(p.NO_JOB, b""), (p.NO_JOB, b"")]
    assert received(p.PacketReader(), noop + no_job) == [(p.NOOP, b""), (p.NO_JOB, b"")]
    with pytest.raises(p.ProtocolError):
        received(p.PacketReader(), no_job + b"\0REQ" + noop[4:])


@pytest.fixture
def linked() -> Iterator[tuple[GearmandConnection, socket.socket]]:
    """A connected GearmandConnection and the far end of its socket (a
    loopback pair the test made; no gearmand)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        link = GearmandConnection(Server("127.0.0.1", listener.getsockname()[1]), 0, 5.0)
        link.start_connect()
        far, _ = listener.accept()
        link.finish_connect()
        assert link.status == UP
        yield link, far
        link.close()
        far.close()


def test_the_wake_up_is_peeked_and_read_only_when_skipped(
        linked: tuple[GearmandConnection, socket.socket]) -> None:
    link, far = linked
    assign = p.HEADER.pack(p.RES, p.JOB_ASSIGN_UNIQ, 9) + b"H:1\0f\0u\0d"
    buffer = bytearray(64)
    view = memoryview(buffer)
    far.sendall(p.NO_JOB_THEN_NOOP + assign)
    link.sock.recv(1, socket.MSG_PEEK | socket.MSG_WAITALL)  # type: ignore[union-attr]  # the bytes are here
    assert link.peek_woken(buffer, view)
    assert link.peek_woken(buffer, view)  # still there: a peek takes nothing
    link.skip_woken(buffer)  # the wake-up, and nothing after it
    assert not link.peek_woken(buffer, view)  # a job waits now, not a wake-up
    assert list(link.receive(buffer, view)) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]


def test_no_wake_up_is_seen_in_the_middle_of_a_packet(linked: tuple[GearmandConnection, socket.socket]) -> None:
    link, far = linked
    buffer = bytearray(64)
    view = memoryview(buffer)
    no_job = p.HEADER.pack(p.RES, p.NO_JOB, 0)
    far.sendall(p.HEADER.pack(p.RES, p.WORK_DATA, len(no_job) * 2)[:8])  # a header cut short
    assert list(link.receive(buffer, view)) == []
    far.sendall(p.HEADER.pack(p.RES, p.WORK_DATA, len(no_job) * 2)[8:] + p.NO_JOB_THEN_NOOP)
    link.sock.recv(1, socket.MSG_PEEK | socket.MSG_WAITALL)  # type: ignore[union-attr]
    assert not link.peek_woken(buffer, view)  # these bytes end the packet begun before
    assert list(link.receive(buffer, view)) == [(p.WORK_DATA, p.NO_JOB_THEN_NOOP)]


def test_a_wake_up_cut_short_loses_the_connection(
        linked: tuple[GearmandConnection, socket.socket]) -> None:
    link, far = linked
    buffer = bytearray(64)
    far.sendall(p.NO_JOB_THEN_NOOP[:12])
    far.close()
    link.sock.recv(1, socket.MSG_PEEK | socket.MSG_WAITALL)  # type: ignore[union-attr]
    assert not link.peek_woken(buffer, memoryview(buffer))
    with pytest.raises(ConnectionLost):
        link.skip_woken(buffer)


def receive_timeout(link: GearmandConnection) -> float:
    """The socket's SO_RCVTIMEO, in seconds."""
    seconds, micros = struct.unpack("ll", link.sock.getsockopt(  # type: ignore[union-attr]
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("ll")))
    return seconds + micros / 1e6


def test_a_dozing_read_waits_briefly_and_not_for_a_lone_no_job(
        linked: tuple[GearmandConnection, socket.socket]) -> None:
    # A dozing child waits for its next job in the read itself: the read
    # gives up after DOZING_TIMEOUT (the child then says "idle"), and the
    # NO_JOB it dozes through neither ends the wait nor is taken by it.
    link, far = linked
    buffer = bytearray(64)
    view = memoryview(buffer)
    link.doze()
    assert receive_timeout(link) == pytest.approx(DOZING_TIMEOUT, abs=0.01)  # the kernel counts in ticks
    assert link.peek_woken(buffer, view) is None  # nothing came
    assert link.receive(buffer, view) is NOTHING_READ
    no_job, noop = p.NO_JOB_THEN_NOOP[:p.HEADER_SIZE], p.NO_JOB_THEN_NOOP[p.HEADER_SIZE:]
    far.sendall(no_job)
    assert link.peek_woken(buffer, view) is None  # below the low-water mark: still asleep
    far.sendall(noop)
    assert link.peek_woken(buffer, view) is True  # the NO_JOB waited, and the wake-up is whole
    link.skip_woken(buffer)
    link.undoze()
    assert receive_timeout(link) == pytest.approx(link.connect_timeout, abs=0.01)  # awake: what gearmand may take


def test_encode_result() -> None:
    assert encode_result(b"x") == b"x" and encode_result("é") == "é".encode() and encode_result(None) == b""
    with pytest.raises(TaskResultError, match="task returned int"):
        encode_result(42)


@pytest.mark.parametrize("result", [b"", b"x", b"a\0b", bytes(range(256)) * 300])
def test_the_answer_on_every_jobs_path_is_the_packet_request_builds(result: bytes) -> None:
    assert p.work_complete(b"H:gm:42", result) == p.request(p.WORK_COMPLETE, b"H:gm:42", result)
