"""Capacity that follows the queue: how many shared children the pool wants.

Two halves. QueueWatcher, a thread of the master, asks every configured
gearmand once a second how many jobs of the pool's shared tasks wait
(gearmand_admin.py) and hands the sum to the master's queue; it never
touches a child or the job path. Autoscaler, plain decisions the master
takes in its main loop (tests drive it with numbers):

- up, while jobs wait and no shared child is spare (idle or still
  starting): by as many children as jobs wait, up to max_processes. A
  child that is starting counts as spare, so a burst is answered once,
  not once per poll while the new children register.
- down, once no job has waited for scale_down_after seconds: one idle
  child per poll, down to min_processes. Any waiting job restarts that
  clock: a queue that comes and goes does not make the pool flap.
- nothing, when no gearmand answered: no news is not an empty queue.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from typing import Protocol

from .commands import Command, QueueSeen
from .config import Config, Server
from .gearmand_admin import status

log = logging.getLogger("gearman_workers.autoscale")

POLL_INTERVAL = 1.0
ADMIN_TIMEOUT = 1.0


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    waiting: int   # jobs of the watched tasks that wait, on the servers that answered
    answered: int  # servers that answered
    asked: int


@dataclasses.dataclass(frozen=True)
class Decision:
    to: int
    why: str

    def direction(self, desired: int) -> str:
        return "up" if self.to > desired else "down"


class Autoscaler:
    def __init__(self, low: int, high: int, scale_down_after: float) -> None:
        self.low, self.high, self.scale_down_after = low, high, scale_down_after
        self.quiet_since: float | None = None
        self.decisions = {"up": 0, "down": 0}
        self.last: Decision | None = None
        self.waiting = 0  # as last seen (metrics, status)

    def decide(self, now: float, depth: QueueDepth, desired: int, spare: int) -> Decision | None:
        """What to do, given the queue DEPTH and the shared children: DESIRED
        of them wanted, SPARE of those idle or starting."""
        if not self.low <= desired <= self.high:  # a reload moved the bounds
            return self._decided(desired, min(self.high, max(self.low, desired)),
                                 f"outside min_processes {self.low} .. max_processes {self.high}")
        if depth.answered == 0:
            return None
        self.waiting = depth.waiting
        if depth.waiting:
            self.quiet_since = None
            if spare == 0 and desired < self.high:
                return self._decided(desired, min(self.high, desired + depth.waiting),
                                     f"{depth.waiting} job(s) waiting and all {desired} children busy")
            return None
        if self.quiet_since is None:
            self.quiet_since = now
        quiet = now - self.quiet_since
        if quiet >= self.scale_down_after and desired > self.low and spare > 0:
            return self._decided(desired, desired - 1, f"no job waiting for {quiet:.0f} s")
        return None

    def _decided(self, desired: int, to: int, why: str) -> Decision:
        decision = Decision(to, why)
        self.decisions[decision.direction(desired)] += 1
        self.last = decision
        return decision


def reconfigured(current: Autoscaler | None, config: Config, watching: bool) -> Autoscaler | None:
    """After a reload: the same autoscaler with the new bounds (its history
    kept), a new one, or none: without a queue watcher a new one could not
    decide."""
    if not config.autoscaling:
        return None
    if current is None:
        return Autoscaler(*config.bounds(), config.scale_down_after) if watching else None
    current.low, current.high = config.bounds()
    current.scale_down_after = config.scale_down_after
    return current


class Master(Protocol):
    """What the watcher needs of the master (master.py)."""

    fork_lock: threading.Lock

    def submit(self, command: Command) -> None: ...


class QueueWatcher:
    """The thread that polls gearmand. It survives any answer: whatever goes
    wrong with one server is that server's outage, logged once until it
    answers again.

    Names are resolved outside the master's fork lock, so a slow resolver
    never holds up a fork. The master resolved every configured name
    before any thread existed (OsProcessTable.prepare in processes.py), so the
    resolver's modules are loaded and no dlopen can be in flight at a fork;
    what locks are left in glibc's resolver are reset in the child by fork
    itself, and a child that hung anyway would be killed as silent."""

    def __init__(self, servers: list[Server], tasks: list[str]) -> None:
        self.servers, self.tasks = servers, set(tasks)
        self._stop = threading.Event()
        self._down: set[Server] = set()

    def start(self, master: Master) -> None:
        self._stop = stop = threading.Event()
        threading.Thread(target=self._run, args=(master, stop), name="autoscale", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, master: Master, stop: threading.Event) -> None:
        while not stop.wait(POLL_INTERVAL):
            depth = self.poll(master.fork_lock)
            if not stop.is_set():
                master.submit(QueueSeen(depth))

    def poll(self, lock: threading.Lock) -> QueueDepth:
        waiting = answered = 0
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
                    log.info("gearmand %s answers again; autoscaling counts its queue", server)
            answered += 1
            waiting += sum(row.waiting for name, row in table.items() if name in self.tasks)
        return QueueDepth(waiting, answered, len(self.servers))

    def _outage(self, server: Server, err: Exception, lock: threading.Lock) -> None:
        if server not in self._down:
            self._down.add(server)
            with lock:
                log.warning("gearmand %s does not answer admin status (%s); autoscaling decides on the others",
                            server, err)
