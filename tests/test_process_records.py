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
