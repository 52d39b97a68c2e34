"""The master as its other threads see it. The control listener, the metrics
server and the queue watcher hold a MasterView, never the master: through
it they queue a command (the main loop acts on it) and read views built
from a snapshot of the master's state. Everything here runs on their
threads, and reads only."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Protocol

from . import procfs
from .autoscale import Autoscaler
from .children import Child
from .commands import Command, Inbox
from .config import Config
from .gearmand_admin import FunctionStatus
from .jobstats import JobStats, TaskTotals
from .metrics import Firing, Snapshot
from .scoreboard import ChildState, Scoreboard, SlotInfo


class Observed(Protocol):
    """What a view reads of the master (master.py)."""

    pid: int
    started_at: float
    desired: int
    config: Config
    board: Scoreboard
    children: dict[int, Child]
    child_exits: dict[str, int]
    autoscaler: Autoscaler | None
    stats: JobStats


class Keeping(Protocol):
    dead_jobs: dict[str, int] | None  # task -> dead letters in the fleet (None: not read yet)
    leading: bool  # holds the fleet's jobs lease
    @property
    def scheduler(self) -> Firing: ...  # the schedules it fired as the leader


class Steered(Protocol):
    @property
    def paused(self) -> frozenset[str]: ...  # the tasks paused for this pool

    def withheld(self) -> dict[str, int]: ...  # task -> children that do not offer it now


class Watching(Protocol):
    @property
    def seen(self) -> dict[str, dict[str, FunctionStatus]]: ...  # server -> task -> its queue, as last polled


class Listening(Protocol):
    up: bool  # the control listener is subscribed now
    outcomes: collections.Counter[tuple[str, str]]  # (outcome, reason) -> control messages


@dataclasses.dataclass(frozen=True)
class RunningJob:
    """A job one of the pool's children runs now (what a cancel acts on)."""

    slot: int
    pid: int
    handle: str
    server: int


def running_job(master: Observed, handle: str | None, unique: bytes | None) -> RunningJob | None:
    """The child busy with job HANDLE, or with the job whose unique is UNIQUE."""
    for child in list(master.children.values()):
        info = master.board.read(child.slot)
        if info.state == ChildState.BUSY and info.pid == child.pid and child.killed_because is None \
                and (info.job_handle == handle if handle is not None else info.job_unique == unique):
            return RunningJob(child.slot, child.pid, info.job_handle, info.server)
    return None


@dataclasses.dataclass(frozen=True)
class ChildView:
    child: Child
    info: SlotInfo

    @property
    def state(self) -> str:
        """As status and metrics name it: asked to leave is stopping already;
        a slot not yet written is starting."""
        if not self.child.live:
            return "stopping"
        return "starting" if self.info.state == ChildState.EMPTY else self.info.state.name.lower()


@dataclasses.dataclass(frozen=True)
class PoolSnapshot:
    pid: int
    started_at: float
    desired: int
    servers: list[str]
    children: list[ChildView]
    exits: dict[str, int]
    autoscale: dict[str, Any] | None
    control_up: bool | None
    control_messages: dict[tuple[str, str], int]
    jobs: list[TaskTotals]


def snapshot(master: Observed, control: Listening | None) -> PoolSnapshot:
    """The master's state at one moment. list() copies atomically: the main
    loop may change the children meanwhile."""
    children = sorted(list(master.children.values()), key=lambda c: c.slot)
    return PoolSnapshot(master.pid, master.started_at, master.desired, [str(s) for s in master.config.servers],
                        [ChildView(child, master.board.read(child.slot)) for child in children],
                        dict(master.child_exits), autoscale_summary(master.autoscaler),
                        control.up if control is not None else None,
                        dict(control.outcomes) if control is not None else {},
                        master.stats.totals(master.board.slots_in_use))


def autoscale_summary(scaler: Autoscaler | None) -> dict[str, Any] | None:
    if scaler is None:
        return None
    last = scaler.last
    return {"min": scaler.low, "max": scaler.high, "waiting": scaler.waiting, "up": scaler.decisions["up"],
            "down": scaler.decisions["down"], "last": None if last is None else {"to": last.to, "why": last.why}}


def registered_count(seen: list[ChildView]) -> int:
    """Children neither leaving nor killed that are registered and taking jobs."""
    return sum(1 for view in seen if view.child.live and view.info.registered)


def status_line(seen: list[ChildView], servers: list[Any], wanted: int) -> str:
    """What systemd's STATUS= says (the main loop's, each turn): counts, and
    the gearmands no child is registered with."""
    registered_n = registered_count(seen)
    busy = sum(view.info.state == ChildState.BUSY for view in seen)
    line = f"{registered_n}/{wanted} children registered, {busy} busy"
    silent = [str(server) for index, server in enumerate(servers)
              if not any(view.info.registered_with >> index & 1 for view in seen)]
    return line + (f"; waiting for gearmand {', '.join(silent)}" if silent and seen else "")


def summary(snap: PoolSnapshot) -> dict[str, Any]:
    """What the heartbeat tells the fleet (gm-ctl pools, gm-ctl status)."""
    return {"pid": snap.pid, "desired": snap.desired, "registered": registered_count(snap.children),
            "started": snap.started_at, "reported": time.time(), "autoscale": snap.autoscale,
            "children": [child_row(view) for view in snap.children]}


def child_row(view: ChildView) -> dict[str, Any]:
    child, info, now = view.child, view.info, time.monotonic()
    busy = info.state == ChildState.BUSY and info.pid == child.pid
    return {"slot": child.slot, "pid": child.pid, "state": view.state, "dedicated_to": child.dedicated_to,
            "task": info.task if busy else None, "job": info.job_handle if busy else None,
            "busy_for": round(now - info.busy_since, 3) if busy else None,
            "jobs_done": info.jobs_done, "jobs_failed": info.jobs_failed,
            "rss": procfs.resident_bytes(child.pid), "age": round(now - child.started, 3)}


def metrics(snap: PoolSnapshot) -> Snapshot:
    states: dict[str, int] = {}
    for view in snap.children:
        states[view.state] = states.get(view.state, 0) + 1
    registered_with = {server: sum(1 for view in snap.children if view.info.registered_with >> index & 1)
                       for index, server in enumerate(snap.servers)}
    resident = {"master": procfs.resident_bytes(snap.pid) or 0,
                "children": sum(procfs.resident_bytes(view.child.pid) or 0 for view in snap.children)}
    return Snapshot(snap.desired, states, snap.exits, registered_with, snap.control_up, snap.jobs, resident,
                    snap.autoscale, snap.control_messages)


class MasterView:
    """The one object other threads hold (see the module's text)."""

    def __init__(self, master: Observed, inbox: Inbox, fork_lock: threading.Lock, control_since: float,
                 control: Listening | None = None, keeper: Keeping | None = None,
                 steering: Steered | None = None, watcher: Watching | None = None) -> None:
        self._master, self._inbox, self._control, self._keeper = master, inbox, control, keeper
        self._steering, self._watcher = steering, watcher
        self.pid = master.pid
        self.fork_lock = fork_lock  # held by a thread whenever it is not just waiting (processes.py)
        self.control_since = control_since  # commands stamped before this are not for this master

    def submit(self, command: Command) -> None:
        self._inbox.put(command)

    def summary(self) -> dict[str, Any]:
        paused = sorted(self._steering.paused & set(self._master.config.tasks)) if self._steering else None
        return summary(snapshot(self._master, self._control)) | {"paused": paused}

    def metrics_snapshot(self) -> Snapshot:
        found = metrics(snapshot(self._master, self._control))
        if self._keeper is not None:
            found.dead_jobs = self._keeper.dead_jobs
            found.leader, found.schedules = self._keeper.leading, self._keeper.scheduler
        if self._watcher is not None:
            found.queues = {server: {task: (row.waiting, row.running, row.workers) for task, row in table.items()}
                            for server, table in self._watcher.seen.items()}
        if self._steering is not None:
            withheld = self._steering.withheld()
            found.tasks = {task: (task in self._steering.paused, withheld.get(task, 0))
                           for task in self._master.config.tasks}
        return found

    def autoscales(self) -> bool:
        return self._master.autoscaler is not None

    def serves(self, task: str) -> bool:
        return task in self._master.config.tasks

    def busy_task(self, slot: int) -> str | None:
        """The task SLOT's child runs a job of now, or None."""
        info = self._master.board.read(slot)
        return info.task if info.state == ChildState.BUSY else None

    def running_job(self, handle: str | None, unique: bytes | None) -> RunningJob | None:
        return running_job(self._master, handle, unique)

    def gearmands(self) -> list[Any]:
        return list(self._master.config.servers)
