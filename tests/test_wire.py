"""The Gearman wire pieces: packets and results, no server."""

from __future__ import annotations

import pytest

from gearman_workers import protocol as p
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


def test_encode_result() -> None:
    assert encode_result(b"x") == b"x" and encode_result("é") == "é".encode() and encode_result(None) == b""
    with pytest.raises(TaskResultError, match="task returned int"):
        encode_result(42)


@pytest.mark.parametrize("result", [b"", b"x", b"a\0b", bytes(range(256)) * 300])
def test_the_answer_on_every_jobs_path_is_the_packet_request_builds(result: bytes) -> None:
    assert p.work_complete(b"H:gm:42", result) == p.request(p.WORK_COMPLETE, b"H:gm:42", result)
