"""What the master records of processes and reads back: the state file,
exit descriptions, the scoreboard. No server."""

from __future__ import annotations

import os
import time

import pytest

from gearman_workers.children import describe_exit
from gearman_workers.identities import PoolProcesses, ProcessIdentity, StateFileError


def test_state_file_rejects_what_a_master_never_writes() -> None:
    good = PoolProcesses("p", "boot", ProcessIdentity(10, 5), [ProcessIdentity(11, 6)])
    assert PoolProcesses.from_json(good.to_json()) == good
    for text in ("", "[]", '{"version": 1}', good.to_json().replace('"pid": 11', '"pid": "11"'),
                 good.to_json().replace('"version": 1', '"version": 9')):
        with pytest.raises(StateFileError):
            PoolProcesses.from_json(text)


def test_describe_exit_names_the_signal() -> None:
    assert describe_exit(9) == "killed by SIGKILL"
    assert describe_exit(3 << 8) == "exited with status 3"


def test_the_master_never_reads_a_half_written_heartbeat() -> None:
    """A child rewrites its slot while the master reads it (another
    process, no lock): every read sees the old record or the new one, never
    the zeroes struct.pack_into writes first (the master took those for a
    child silent since boot, and killed it)."""
    from gearman_workers.scoreboard import ChildState, Scoreboard

    board = Scoreboard(2)
    board.reset(0)
    writer = board.writer(0, 4242)
    child = os.fork()
    if child == 0:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            writer.publish(ChildState.IDLE)
            writer.beat()
        os._exit(0)
    try:
        reads = [board.read(0) for _ in range(100_000)]
    finally:
        os.waitpid(child, 0)
    assert all(info.heartbeat > 0 and info.pid in (0, 4242) for info in reads)


def test_the_poison_check_finds_exactly_the_busy_slots_that_name_the_job() -> None:
    """A child that receives a job asks whether some slot in use names it
    (a child that died holding it, not yet reaped): a handle that only
    starts like it, an idle slot, another server or a free slot is no match."""
    from gearman_workers.scoreboard import HANDLE_FIELD, ChildState, Scoreboard

    board = Scoreboard(6)
    board.set_slots_in_use(5)
    long_handle = b"H:host:" + b"9" * (HANDLE_FIELD - 7)  # fills its field: no NUL after it
    named = [(b"H:host:12", 0), (b"H:host:123", 0), (b"H:host:12", 1), (b"H:host:12", 0), (long_handle, 0)]
    for slot, (handle, server) in enumerate(named):
        board.reset(slot)
        writer = board.writer(slot, 100 + slot)
        writer.publish(ChildState.IDLE)
        writer.busy(1.0, 0.0, server, b"echo", b"", handle)
    board.writer(3, 103).between_jobs(ChildState.IDLE, 2.0)  # its job is over: the handle stays, idle
    board.reset(5)
    board.writer(5, 105).busy(1.0, 0.0, 0, b"echo", b"", b"H:host:77")  # beyond the slots in use

    assert board.busy_with(0, b"H:host:12") == [100]
    assert board.busy_with(1, b"H:host:12") == [102]
    assert board.busy_with(0, long_handle) == [104]
    assert board.busy_with(0, b"H:host:1") == []
    assert board.may_name_job(b"H:host:12") and not board.may_name_job(b"H:host:77")
    assert board.read(1).job_handle == "H:host:123"


def test_no_two_children_write_the_same_cache_line() -> None:
    """Every child rewrites its slot twice a job while the others search
    the handles: a line two children wrote would bounce between their CPUs
    on every job (bench/protections --n 4)."""
    from gearman_workers.scoreboard import Scoreboard

    board = Scoreboard(5)

    def lines(part: slice) -> set[int]:
        return set(range(part.start // 64, -(-part.stop // 64)))

    written = []
    for slot in range(5):
        writer = board.writer(slot, 100 + slot)
        written.append(lines(writer._handle) | lines(writer._setup) | lines(writer._job))
    for slot, mine in enumerate(written):
        for other in written[slot + 1:]:
            assert not mine & other
