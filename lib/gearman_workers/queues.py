"""The queue watcher: a thread of the master that asks every configured
gearmand once a second for its status table (gearmand_admin.py). It keeps
what each server said of the pool's tasks (queued, running, workers: the
metrics' per-server queues) and hands the master the jobs of the shared
tasks that wait anywhere (QueueSeen: the autoscaler's input). It never
touches a child or the job path, and survives any answer: whatever goes
wrong with one server is that server's outage, logged once until it
answers again.

Names are resolved outside the master's fork lock, so a slow resolver
never holds up a fork. The master resolved every configured name before
any thread existed (OsProcessTable.prepare in processes.py), so the
resolver's modules are loaded and no dlopen can be in flight at a fork;
what locks are left in glibc's resolver are reset in the child by fork
itself, and a child that hung anyway would be killed as silent.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Protocol

from .autoscale import QueueDepth
from .commands import Command, QueueSeen
from .config import Server
from .gearmand_admin import FunctionStatus, status

log = logging.getLogger("gearman_workers.queues")

POLL_INTERVAL = 1.0
ADMIN_TIMEOUT = 1.0


class Master(Protocol):
    """What the watcher needs of the master (master.py)."""

    fork_lock: threading.Lock

    def submit(self, command: Command) -> None: ...


class QueueWatcher:
    def __init__(self, servers: list[Server], shared: list[str], tasks: list[str]) -> None:
        self.servers, self.shared, self.tasks = servers, set(shared), set(tasks)
        # server (host:port) -> task -> what it said last; a server that does not answer is left out
        self.seen: dict[str, dict[str, FunctionStatus]] = {}
        self._stop = threading.Event()
        self._down: set[Server] = set()

    def start(self, master: Master) -> None:
        self._stop = stop = threading.Event()
        threading.Thread(target=self._run, args=(master, stop), name="queues", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def configure(self, servers: list[Server], shared: list[str], tasks: list[str]) -> None:
        """A reload's servers and tasks, from the next poll on."""
        self.servers, self.shared, self.tasks = servers, set(shared), set(tasks)

    def _run(self, master: Master, stop: threading.Event) -> None:
        while not stop.wait(POLL_INTERVAL):
            depth = self.poll(master.fork_lock)
            if not stop.is_set():
                master.submit(QueueSeen(depth))

    def poll(self, lock: threading.Lock) -> QueueDepth:
        waiting = answered = 0
        seen: dict[str, dict[str, FunctionStatus]] = {}
        for server in self.servers:
            try:
                address = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)[0][4]
                table = status(address, ADMIN_TIMEOUT)
            except Exception as err:
                self._outage(server, err, lock)
                continue
            if server in self._down:
                self._down.discard(server)
                with lock:
                    log.info("gearmand %s answers admin status again", server)
            answered += 1
            waiting += sum(row.waiting for name, row in table.items() if name in self.shared)
            seen[str(server)] = {name: row for name, row in table.items() if name in self.tasks}
        self.seen = seen  # one assignment: a reader sees one poll's whole
        return QueueDepth(waiting, answered, len(self.servers))

    def _outage(self, server: Server, err: Exception, lock: threading.Lock) -> None:
        if server not in self._down:
            self._down.add(server)
            with lock:
                log.warning("gearmand %s does not answer admin status (%s); its queues are not counted (for "
                            "autoscaling and metrics) until it does", server, err)
