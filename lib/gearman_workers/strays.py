"""Processes that task code forked, recorded so that they can be stopped
after their master was killed outside systemd.

While the master lives, such a process dies with its child (the child's
process group) or is adopted and killed by the master (a subreaper). A
master killed with SIGKILL can do neither: its children die by their
death signal, but a double-forked daemon of a task lives on. Each process
that task code forks therefore appends its identity to its child's file
(STATE_DIR/POOL.forks.CHILDPID), and gm-cleanup, at the next start, stops
those whose identity still matches. The master removes a child's file once
it has reaped that child and stopped what it left.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .identities import ProcessIdentity


def forks_file(state_dir: Path, pool: str, child_pid: int) -> Path:
    return state_dir / f"{pool}.forks.{child_pid}"


def forks_files(state_dir: Path, pool: str) -> list[Path]:
    return sorted(state_dir.glob(f"{pool}.forks.*"))


class StrayLog:
    """A child's record of the processes its tasks forked."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record_self(self) -> None:
        """In the forked process: one short line, appended whole (O_APPEND)."""
        me = ProcessIdentity.of(os.getpid())
        if me is None:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, f"{me.pid} {me.start_time}\n".encode())
            finally:
                os.close(fd)


def read(path: Path) -> list[ProcessIdentity]:
    """The identities in one forks file; lines that are not two numbers are skipped."""
    found = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        fields = line.split()
        if len(fields) == 2 and all(f.isdigit() for f in fields) and int(fields[0]) > 1:
            found.append(ProcessIdentity(int(fields[0]), int(fields[1])))
    return found
