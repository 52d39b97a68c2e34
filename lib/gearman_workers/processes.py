"""The master's process table: fork, signal, kill a child's process group,
reap, find the orphans it adopted as a subreaper, and keep the record of
the pool's processes on disk (identities.py) that a cleanup after a crash
reads. Nothing here decides; tests replace it with a fake
(tests/test_master.py)."""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from . import identities, procfs, strays
from .config import Server
from .prctl import PR_SET_CHILD_SUBREAPER, prctl


class OsProcessTable:
    def __init__(self, processes_file: Path, state_dir: Path, pool: str,
                 inherited: list[identities.ProcessIdentity] | None = None) -> None:
        self.processes_file, self.state_dir, self.pool = processes_file, state_dir, pool
        # Held around fork(), and by every other thread whenever it is not
        # just waiting: a child must never inherit a lock (an import's, a
        # stream's) that a thread held at the moment of the fork.
        self.fork_lock = threading.Lock()
        # As a successor: our predecessor's processes, recorded in our
        # processes file while they drain (handover.py).
        self.inherited = inherited or []
        self._identities: dict[int, identities.ProcessIdentity] = {}

    def prepare(self, servers: list[Server]) -> None:
        """Before any thread exists. Orphans of a child's task (a forked
        grandchild) come to us, not to PID 1, so that they can be stopped
        with their child. And load now what the threads would otherwise
        load lazily on their first connect: the idna codec that
        getaddrinfo() looks up (an import, under a module lock) and the
        resolver's NSS modules (a dlopen, under the loader's lock). A child
        forked while a thread held such a lock would wait on it forever the
        first time it resolves a gearmand address."""
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        codecs.lookup("idna")
        for host in ("localhost", *(server.host for server in servers)):
            with contextlib.suppress(OSError, UnicodeError):
                socket.getaddrinfo(host, None)

    def fork(self, become_child: Callable[[], int]) -> int:
        """A child that runs BECOME_CHILD and exits with what it returns."""
        sys.stdout.flush()
        sys.stderr.flush()
        with self.fork_lock:
            pid = os.fork()
        if pid == 0:
            os._exit(become_child())
        # Both sides set the process group, so it exists before either uses it.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        identity = identities.ProcessIdentity.of(pid)
        if identity is not None:
            self._identities[pid] = identity
        return pid

    def signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)  # a dead, unreaped child is still our zombie: its PID is not reused

    def kill_group(self, pid: int) -> None:
        """SIGKILL child PID (not yet reaped) and every process in its group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.signal(pid, signal.SIGKILL)  # in case it died before its group existed

    def wait(self, block: bool, children: Collection[int]) -> tuple[int, int] | None:
        """Reap one exited process: (pid, wait status). A child's process
        group is killed while the child is still a zombie: until it is
        reaped, its PID, and so its group's ID, cannot belong to anyone
        else. What it forked elsewhere is ours to stop (adopted)."""
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            exited = os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:
            return None
        if exited is None:
            return None
        if exited.si_pid in children:
            self.kill_group(exited.si_pid)
            strays.forks_file(self.state_dir, self.pool, exited.si_pid).unlink(missing_ok=True)
        self._identities.pop(exited.si_pid, None)
        return os.waitpid(exited.si_pid, 0)

    def adopted(self, children: Collection[int]) -> set[int]:
        """Processes we adopted as a subreaper: not our children."""
        return procfs.children_of(os.getpid()) - set(children)

    def record(self, children: Iterable[int]) -> None:
        """Write who the pool's processes are (atomically)."""
        me = identities.ProcessIdentity.of(os.getpid())
        assert me is not None
        self.inherited = [identity for identity in self.inherited if identity.is_alive()]
        known = [self._identities[pid] for pid in children if pid in self._identities]
        identities.write(self.processes_file, identities.PoolProcesses(
            pool=self.pool, boot_id=identities.boot_id(), master=me, children=known + self.inherited))
