"""The master: forks the children, keeps the wanted number alive and
registered, and stops them. Signal handlers and the control listener only
enqueue commands (commands.py); every decision is taken in the main loop,
in short methods that tests drive with a fake process table
(tests/test_master.py): spawn, retire, recycle, kill, reap, back off.

Task code cannot take the pool down: a child that runs past its time
limit or whose heartbeat stops is killed and replaced; a job that keeps
killing children is failed (poison.py); a child due for recycling leaves
only after its successor registered; whatever a task forked dies with its
child (each child leads a process group, and the master is a subreaper).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import faulthandler
import gc
import json
import logging
import os
import queue
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import config as configuration
from . import files, identities, procfs, runtime, strays, titles
from . import log as logsetup
from .autoscale import Autoscaler, QueueDepth
from .backoff import Backoff
from .child import Limits, Worker, run_child
from .commands import FROM_SIGNAL, Command, PublishData, QueueSeen, Reload, Scale, Stop, Upgrade
from .handover import Handover, Successor, record_outcome
from .jobstats import JobStats
from .metrics import EXIT_REASONS, Snapshot
from .notify import Notifier
from .pidfile import PidFile, read_pid
from .poison import TIME_LIMIT_EXCEEDED, PoisonLedger
from .prctl import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, prctl
from .scoreboard import ChildState, Recycle, Scoreboard, SlotInfo
from .strays import StrayLog
from .tasks import TaskLoadError, load_tasks

log = logging.getLogger("gearman_workers.master")

CRASH_BACKOFF_FIRST, CRASH_BACKOFF_MAX = 0.25, 30.0
# A registered child that dies by itself sooner than this after its start
# is crash-looping (task code that kills every child it runs in): its slot
# backs off. A child killed from outside (SIGKILL) never makes it wait.
CRASH_LOOP_LIFETIME = 5.0
JITTER = 0.1  # recycling limits vary by up to 10 % per child, so children do not leave together
MIB = 1024 * 1024

# Why the master killed a child (logged, and recorded against its job).
KILLED_TIMEOUT = TIME_LIMIT_EXCEEDED  # the next child answers its job JobTimeout (poison.py)
KILLED_HUNG = "no heartbeat"
KILLED_STOP = "did not stop in time"


class Control(Protocol):
    """What the master needs of a fleet-control listener (see control/)."""

    up: bool  # subscribed to the channel now

    def start(self, master: Master) -> None: ...
    def stop(self) -> None: ...
    def forget_in_child(self) -> None: ...


class Watcher(Protocol):
    """What the master needs of a queue watcher (see autoscale.py)."""

    servers: list[configuration.Server]
    tasks: set[str]

    def start(self, master: Master) -> None: ...
    def stop(self) -> None: ...


class Exporter(Protocol):
    """What the master needs of a metrics server (see metrics.py)."""

    def start(self, source: Master, pool: str, host: str, lock: threading.Lock) -> None: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...
    def forget_in_child(self) -> None: ...


@dataclasses.dataclass
class Child:
    pid: int
    slot: int
    generation: int
    started: float
    identity: identities.ProcessIdentity | None
    limits: Limits
    recycle_at: float | None = None   # max_age reached (monotonic), with jitter
    replacing_because: str | None = None  # due for replacement, and why
    stop_deadline: float | None = None
    killed_because: str | None = None
    poison_recorded: bool = False
    warned_long_job: str = ""  # the job handle long_job_warning was logged for
    dedicated_to: str | None = None  # the one task it registers; None: a shared child (every other task)


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _warm_up_before_threads(servers: list[configuration.Server]) -> None:
    """Load, before the control and watcher threads exist, what they would
    otherwise load lazily on their first connect: the idna codec that
    getaddrinfo() looks up (an import, under a module lock) and the
    resolver's NSS modules (a dlopen, under the loader's lock), for every
    name the pool resolves. A child forked while a thread held such a lock
    would wait on it forever the first time it resolves a gearmand address."""
    codecs.lookup("idna")
    for host in ("localhost", *(server.host for server in servers)):
        with contextlib.suppress(OSError, UnicodeError):
            socket.getaddrinfo(host, None)


def exit_reason(child: Child, status: int, stopping: bool) -> str:
    """Why CHILD left, in the words of gearman_workers_child_exits_total."""
    if child.killed_because == KILLED_TIMEOUT:
        return "timeout"
    if child.killed_because == KILLED_HUNG:
        return "hung"
    if child.stop_deadline is not None or stopping:  # asked to leave (and maybe killed for being slow)
        return "recycled" if child.replacing_because else "stopped"
    return "killed" if os.waitstatus_to_exitcode(status) == -signal.SIGKILL else "crash"


def _jittered(limit: float) -> float:
    return limit * (1 + random.uniform(0, JITTER))


class Master:
    def __init__(self, config: configuration.Config, tasks: dict[str, Callable[..., Any]],
                 pidfile: PidFile, notifier: Notifier | None = None, control: Control | None = None,
                 handover: Handover | None = None, inherited: list[identities.ProcessIdentity] | None = None,
                 exporter: Exporter | None = None, watcher: Watcher | None = None) -> None:
        self.config = config
        self.tasks = tasks
        self.pidfile = pidfile
        self.notifier = notifier or Notifier()
        self.control = control
        self.board = Scoreboard(configuration.MAX_PROCESSES + 1)
        self.exporter = exporter
        self.stats = JobStats(self.board.slots)  # counted into by the children only when exported
        self.stats.add_tasks(tasks)
        self.child_exits = dict.fromkeys(EXIT_REASONS, 0)
        self.title = titles.master(config.name)
        self.children: dict[int, Child] = {}
        self.desired = config.processes  # shared children; dedicated ones are config.dedicated()
        self.autoscaler = Autoscaler(*config.bounds(), config.scale_down_after) if config.autoscaling else None
        self.watcher = watcher
        self.slot_owner: dict[int, str | None] = {}  # a slot, once used, serves one group: its back-off is that group's
        self.generation = 0
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.stopping = False
        self.exit_status = 0
        self.slot_backoff: dict[int, Backoff] = {}
        self.slot_not_before: dict[int, float] = {}
        self.ledger = PoisonLedger()
        self.ready = False
        self.pid = os.getpid()
        self.started_at = time.time()
        # Upgrades (handover.py). As a successor: what we inherited, until
        # our children are registered; our predecessor's processes, recorded
        # in our processes file while they drain. As a predecessor: the master we
        # started, until it is ready or given up.
        self.handover = handover
        self.inherited = inherited or []
        self.successor: Successor | None = None
        self.handed_over = False
        # Exit commands sent after this moment are for us (a successor takes
        # over the listening from the moment its predecessor stopped).
        self.control_since = handover.control_since if handover else self.started_at
        # Held around fork(), and by the control thread whenever it is not
        # just waiting: a child must never inherit a lock (an import's, a
        # stream's) that thread held at the moment of the fork.
        self.fork_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._events_r, self._events_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._orphans_possible = False

    # --- what other threads may call ------------------------------------

    def submit(self, command: Command) -> None:
        """Queue a command; the main loop acts on it."""
        self.commands.put(command)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"c")

    def summary(self) -> dict[str, Any]:
        """What the heartbeat tells the fleet (gm-ctl pools, gm-ctl status)."""
        return {"pid": self.pid, "desired": self.desired, "registered": self.registered_count(),
                "started": self.started_at, "reported": time.time(), "autoscale": self._autoscale_summary(),
                "children": [self._child_row(c) for c in sorted(list(self.children.values()), key=lambda c: c.slot)]}

    def _autoscale_summary(self) -> dict[str, Any] | None:
        scaler = self.autoscaler
        if scaler is None:
            return None
        last = scaler.last
        return {"min": scaler.low, "max": scaler.high, "waiting": scaler.waiting, "up": scaler.decisions["up"],
                "down": scaler.decisions["down"], "last": None if last is None else {"to": last.to, "why": last.why}}

    @staticmethod
    def _state_name(child: Child, info: SlotInfo) -> str:
        """The child's state as status and metrics name it: asked to leave
        is stopping already; a slot not yet written is starting."""
        if child.stop_deadline is not None or child.killed_because is not None:
            return "stopping"
        return "starting" if info.state == ChildState.EMPTY else info.state.name.lower()

    def _child_row(self, child: Child) -> dict[str, Any]:
        info, now = self.board.read(child.slot), time.monotonic()
        busy = info.state == ChildState.BUSY and info.pid == child.pid
        return {"slot": child.slot, "pid": child.pid, "state": self._state_name(child, info),
                "dedicated_to": child.dedicated_to,
                "task": info.task if busy else None, "job": info.job_handle if busy else None,
                "busy_for": round(now - info.busy_since, 3) if busy else None,
                "jobs_done": info.jobs_done, "jobs_failed": info.jobs_failed,
                "rss": procfs.resident_bytes(child.pid), "age": round(now - child.started, 3)}

    def metrics_snapshot(self) -> Snapshot:
        children = list(self.children.values())
        infos = [self.board.read(c.slot) for c in children]
        states: dict[str, int] = {}
        for child, info in zip(children, infos, strict=True):
            name = self._state_name(child, info)
            states[name] = states.get(name, 0) + 1
        registered = {str(server): sum(1 for info in infos if info.registered_with >> index & 1)
                      for index, server in enumerate(self.config.servers)}
        return Snapshot(self.desired, states, dict(self.child_exits), registered,
                        self.control.up if self.control is not None else None,
                        self.stats.totals(self.board.header()[2]),
                        {"master": procfs.resident_bytes(self.pid) or 0,
                         "children": sum(procfs.resident_bytes(c.pid) or 0 for c in children)},
                        self._autoscale_summary())

    # --- the main loop ------------------------------------------------------

    def run(self) -> int:
        # systemd's watchdog ends a wedged master with SIGABRT: the journal
        # then shows where every thread was stuck.
        faulthandler.enable()
        self._install_signals()
        # Orphans of a child's task (a forked grandchild) come to us, not to
        # PID 1, so that they can be stopped with their child.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        _warm_up_before_threads(self.config.servers)
        gc.freeze()  # keep the collector off preloaded objects: pages stay shared
        self.title.show()
        if self.handover is not None:
            self.notifier.muted = True  # systemd hears from us once our predecessor made us its main process
            log.info("master %d takes over from master %d", self.pid, self.handover.predecessor)
        self.notifier.send(mainpid=self.pid, status="starting children")
        self._record_processes()
        if self.control is not None:
            self.control.start(self)
        if self.exporter is not None:
            self.exporter.start(self, self.config.name, self.config.hostname, self.fork_lock)
        if self.watcher is not None:
            self.watcher.start(self)
        log.info("master %d starting %d children for tasks %s on %s%s", self.pid, sum(self.groups().values()),
                 ", ".join(self.tasks), ", ".join(map(str, self.config.servers)),
                 "".join(f"; {n} of them only for {task}" for task, n in self.config.dedicated().items()))
        try:
            while True:
                self.step()
                if self.stopping and not self.children:
                    break  # at once: no wait after the last child
                self._sleep()
        finally:
            self._shutdown()
        log.info("master %d exits with status %d", self.pid, self.exit_status)
        return self.exit_status

    def step(self) -> None:
        """One turn of the main loop, without the wait."""
        self.notifier.kick_watchdog()  # from here only: a wedged loop is what systemd must notice
        self._handle_commands()
        self._check_successor()
        self._reap()
        if not self.stopping:
            self._maintain()
        self._watch()
        if self._orphans_possible:
            self._stop_orphans()
        self._report()

    def _sleep(self) -> None:
        if not self.commands.empty():
            return
        try:
            waiting_on = [self._wake_r, self._events_r]
            if self.successor is not None and self.successor.ready_fd >= 0:
                waiting_on.append(self.successor.ready_fd)
            readable, _, _ = select.select(waiting_on, [], [], self._next_check_in())
        except InterruptedError:
            return
        for fd in readable:
            if self.successor is not None and fd == self.successor.ready_fd:
                continue  # the successor's word is read by _check_successor
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def _next_check_in(self) -> float:
        """Seconds until something is due: a respawn, a stop or time-limit
        deadline, a heartbeat check."""
        now = time.monotonic()
        # A back-off that ended without a spawn (the slot is no longer
        # wanted) is forgotten: counted, it would make this wait zero forever.
        self.slot_not_before = {slot: t for slot, t in self.slot_not_before.items() if t > now}
        due = [now + 1.0, *self.slot_not_before.values()]
        watchdog = self.notifier.watchdog_due()
        if watchdog is not None:
            due.append(watchdog)
        if self.successor is not None:
            due.append(self.successor.deadline)
        if self.config.heartbeat_timeout:
            due.append(now + self.config.heartbeat_timeout / 4)
        for child in self.children.values():
            if child.killed_because is not None:
                continue
            if child.stop_deadline is not None:
                due.append(child.stop_deadline)
            if child.recycle_at is not None and child.replacing_because is None:
                due.append(child.recycle_at)
            deadline = self.board.read(child.slot).deadline
            if deadline:
                due.append(deadline + self.config.kill_grace)
        return max(0.0, min(due) - now)

    def _shutdown(self) -> None:
        if self.control is not None and not self.handed_over:
            self.control.stop()
        for child in list(self.children.values()):
            self._kill_group(child.pid)
        self._reap(block=True)
        self._stop_orphans()
        if not self.handed_over:  # else the file is our successor's now
            self.config.processes_file.unlink(missing_ok=True)
        self.notifier.send(status="stopped")

    # --- signals and commands ---------------------------------------------

    def _install_signals(self) -> None:
        for sig in FROM_SIGNAL:
            signal.signal(sig, self._enqueue_signal)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.commands.put(FROM_SIGNAL[signum])  # SimpleQueue.put is safe in a signal handler

    def _on_sigchld(self, signum: int, frame: object) -> None:
        """Nothing to do here: the wake-up fd ends the wait and the loop reaps."""

    def _handle_commands(self) -> None:
        while not self.commands.empty():
            command = self.commands.get_nowait()
            if isinstance(command, Stop):
                hurry = command.hurry_if_stopping and self.stopping
                self.stop(graceful=command.graceful and not hurry, why=command.why)
            elif isinstance(command, Reload):
                self.reload()
            elif isinstance(command, Upgrade):
                self.upgrade()
            elif isinstance(command, Scale):
                self.scale(command.to if command.to is not None else self.desired + command.by)
            elif isinstance(command, PublishData):
                self.publish_data(command.values)
            elif isinstance(command, QueueSeen):
                self.autoscale(command.depth)

    # --- actions ------------------------------------------------------------

    def stop(self, graceful: bool, why: str) -> None:
        if not self.stopping:
            log.info("%s: stopping %s", why, "gracefully" if graceful else "now")
            self.title.show("stopping")
            self.notifier.send(stopping=1, status=f"stopping ({why})")
        self.stopping = True
        if self.watcher is not None:
            self.watcher.stop()
        if self.successor is not None:
            self.successor.give_up("the pool is stopping")
            self._upgrade_failed(self.successor)
        for child in self.children.values():
            if not graceful:
                self._kill(child, KILLED_STOP)
            elif child.stop_deadline is None:
                self._retire(child)

    def scale(self, processes: int) -> None:
        """An operator's scale (gm-ctl scale, TTIN, TTOU): refused while the
        pool autoscales, whose bounds are the configuration's to change."""
        if self.autoscaler is not None:
            log.warning("scale to %d refused: this pool autoscales between min_processes %d and max_processes %d; "
                        "change those in its configuration and reload it", processes, self.autoscaler.low,
                        self.autoscaler.high)
            return
        processes = max(0, min(configuration.MAX_PROCESSES, processes))
        if processes != self.desired:
            log.info("scaling from %d to %d children", self.desired, processes)
            self.desired = processes

    def autoscale(self, depth: QueueDepth) -> None:
        if self.autoscaler is None or self.stopping:
            return
        spare = sum(1 for c in self._live_in(None) if self.board.read(c.slot).state != ChildState.BUSY)
        decision = self.autoscaler.decide(time.monotonic(), depth, self.desired, spare)
        if decision is not None:
            log.info("autoscaling from %d to %d children: %s", self.desired, decision.to, decision.why)
            self.desired = decision.to

    def reload(self) -> None:
        try:
            fresh = configuration.reload(self.config)
            tasks = load_tasks(fresh)
        except (configuration.ConfigError, TaskLoadError) as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        logging.getLogger().setLevel(fresh.log_level.upper())
        self.config, self.tasks = fresh, tasks
        if fresh.autoscaling and self.watcher is None:
            log.warning("min_processes and max_processes take effect at the next restart: this master was "
                        "started without autoscaling, so nothing watches gearmand's queue")
        if fresh.autoscaling and self.autoscaler is not None:  # keep the capacity: decide from here
            self.autoscaler.low, self.autoscaler.high = fresh.bounds()
            self.autoscaler.scale_down_after = fresh.scale_down_after
        else:
            self.desired = fresh.processes
            self.autoscaler = Autoscaler(*fresh.bounds(), fresh.scale_down_after) \
                if fresh.autoscaling and self.watcher else None
        if self.watcher is not None:
            self.watcher.servers, self.watcher.tasks = fresh.servers, set(fresh.shared_tasks())
        self.generation += 1
        self.stats.add_tasks(tasks)
        log.info("configuration reloaded; replacing the children one at a time")

    # --- upgrades (handover.py) -------------------------------------------------

    def upgrade(self) -> None:
        """Start a successor on the code and configuration now on disk; hand
        over once its children are registered."""
        if self.stopping or self.successor is not None or self.handover is not None:
            why = "the pool is stopping" if self.stopping else "an upgrade is under way"
            log.warning("upgrade asked while %s; ignored", why)
            return
        if self.control is not None:
            self.control.stop()  # one listener at a time: the successor's from now on
        try:
            successor = Successor.start(self.pidfile.fileno or -1,
                                        self.exporter.fileno() if self.exporter is not None else -1,
                                        self.notifier.environment(), time.time(), self.config.upgrade_timeout,
                                        self.fork_lock)
        except OSError as err:
            log.error("upgrade failed, keeping this master: cannot start a new one: %s", err)
            record_outcome(self.config.pidfile, self.pid, None, f"cannot start a new master: {err}")
            self._listen_again()
            return
        self.successor = successor
        log.info("upgrade: started a new master on the code and configuration on disk; it takes over once "
                 "its children are registered (upgrade_timeout %g s)", self.config.upgrade_timeout)

    def _check_successor(self) -> None:
        successor = self.successor
        if successor is None:
            return
        successor.poll()
        if successor.overdue(time.monotonic()):
            successor.give_up(f"was not ready within upgrade_timeout {self.config.upgrade_timeout:g} s")
        if successor.ready:
            self._hand_over(successor)
        elif successor.given_up is not None:
            self._upgrade_failed(successor)

    def _hand_over(self, successor: Successor) -> None:
        self.notifier.send(mainpid=successor.pid)
        self.notifier.muted = True  # nothing more from us: it is the main process now
        self.pidfile.write(successor.pid)
        record_outcome(self.config.pidfile, self.pid, successor.pid, "handed over")
        successor.close()
        self.successor, self.handed_over = None, True
        if self.exporter is not None:
            self.exporter.close()  # scrapes go to the new master (it shares our socket)
        log.info("master %d is in charge now; this one lets its children finish their jobs and leaves",
                 successor.pid)
        self.stop(graceful=True, why=f"handed over to master {successor.pid}")

    def _upgrade_failed(self, successor: Successor) -> None:
        log.error("upgrade failed, keeping this master and its code: master %d %s", successor.pid,
                  successor.given_up)
        record_outcome(self.config.pidfile, self.pid, None, f"the new master {successor.given_up}")
        self.successor = None
        self._listen_again()

    def _listen_again(self) -> None:
        if self.control is not None and not self.stopping:
            self.control.start(self)  # its catch-up applies what was sent meanwhile

    def _announce_ready(self) -> None:
        """Tell whoever waits that the pool is ready: systemd, or as a
        successor our predecessor, who then hands over."""
        if self.handover is None:
            self.notifier.send(ready=1)
            return
        self.handover.announce_ready()
        log.info("ready; waiting for master %d to hand over", self.handover.predecessor)

    def _taken_over(self) -> None:
        """As a successor that announced itself: the handover is done once
        our predecessor wrote our PID into the PID file (after telling
        systemd), or has died without doing so."""
        assert self.handover is not None
        if self.handover.ready_fd >= 0:
            return
        if read_pid(self.config.pidfile) != self.pid:
            if self.handover.predecessor_alive():
                return  # still handing over
            log.warning("master %d died during the handover; this one is in charge", self.handover.predecessor)
            self.pidfile.write()
        self.handover.close()
        self.handover, self.notifier.muted = None, False
        self.notifier.send(ready=1, mainpid=self.pid)

    def publish_data(self, values: dict[str, Any]) -> None:
        """New runtime data: children pick it up before their next job."""
        if values == runtime.snapshot() and self.config.runtime_file.exists():
            return
        files.atomic_write(self.config.runtime_file, json.dumps(values, sort_keys=True))
        runtime.replace(values)  # children forked from now on start with it
        self.board.bump_data_version()

    # --- keeping the pool whole -------------------------------------------------

    def _live(self) -> list[Child]:
        """Children neither stopping nor killed. list() copies atomically:
        the control thread asks too (registered_count)."""
        return [c for c in list(self.children.values()) if c.stop_deadline is None and c.killed_because is None]

    def _live_in(self, group: str | None) -> list[Child]:
        """The live children of GROUP: a task's dedicated ones, or (None) the shared ones."""
        return [c for c in self._live() if c.dedicated_to == group]

    def groups(self) -> dict[str | None, int]:
        """Children wanted per group: the shared ones (None), and each task's
        dedicated ones."""
        wanted: dict[str | None, int] = {None: self.desired} if self.config.shared_tasks() else {}
        return wanted | self.config.dedicated()

    def _maintain(self) -> None:
        groups = self.groups()
        for child in self._live():
            if child.dedicated_to not in groups:  # a reload dropped its task or the task's own children
                self._retire(child)
        for group, wanted in groups.items():
            self._maintain_group(group, wanted)

    def _maintain_group(self, group: str | None, wanted: int) -> None:
        live = self._live_in(group)
        outgoing = [c for c in live if self._due_for_replacement(c)]
        if outgoing:
            # Replace one at a time, and let an old child go only while
            # enough others are registered: recycling never leaves gearmand
            # with fewer than `wanted` registered workers.
            staying = [c for c in live if c not in outgoing]
            if sum(self._registered(c) for c in live) > wanted:
                self._retire(self._pick_retiree(outgoing))
            elif len(staying) < wanted and all(self._registered(c) for c in staying):
                self._spawn_missing(1, group)
            return
        missing = wanted - len(live)
        if missing > 0:
            self._spawn_missing(missing, group)
        for _ in range(-missing):
            self._retire(self._pick_retiree(self._live_in(group)))

    def _due_for_replacement(self, child: Child) -> bool:
        if child.replacing_because is None:
            reason = self._replacement_reason(child, self.board.read(child.slot))
            if reason is None:
                return False
            child.replacing_because = reason
            log.info("child %d is due for replacement (%s); starting its successor", child.pid, reason)
        return True

    def _replacement_reason(self, child: Child, info: SlotInfo) -> str | None:
        if child.generation != self.generation:
            return "configuration reloaded"
        if info.recycle == Recycle.MAX_JOBS:
            return f"{info.jobs_done + info.jobs_failed} jobs done, max_jobs {self.config.max_jobs}"
        if info.recycle == Recycle.MAX_MEMORY:
            return f"resident memory above max_memory {self.config.max_memory} MiB"
        if child.recycle_at is not None and time.monotonic() >= child.recycle_at:
            return f"{time.monotonic() - child.started:.0f} s old, max_age {self.config.max_age:g} s"
        return None

    def _pick_retiree(self, candidates: list[Child]) -> Child:
        """Prefer an idle child, then the youngest."""
        def busy(child: Child) -> bool:
            return self.board.read(child.slot).state == ChildState.BUSY
        return min(candidates, key=lambda c: (busy(c), -c.started))

    def _spawn_missing(self, count: int, group: str | None = None) -> None:
        """Fill GROUP's COUNT lowest free slots whose crash back-off is over.
        A slot backing off waits; its crashes never delay another slot."""
        used = {child.slot for child in self.children.values()}
        free = [slot for slot in range(self.board.slots)
                if slot not in used and self.slot_owner.get(slot, group) == group][:count]
        now = time.monotonic()
        for slot in free:
            if now >= self.slot_not_before.get(slot, 0.0):
                self.slot_not_before.pop(slot, None)
                self.spawn(slot, group)

    def _limits(self) -> Limits:
        config = self.config
        return Limits(max_jobs=int(_jittered(config.max_jobs)), max_memory=config.max_memory * MIB,
                      heartbeat_interval=config.heartbeat_timeout / 5, poison_kills=config.poison_kills,
                      kill_grace=config.kill_grace)

    def spawn(self, slot: int, group: str | None = None) -> Child:
        limits = self._limits()
        self.board.reset(slot)  # before the fork: the master must never read the last owner's heartbeat
        self.board.set_slots_in_use(max(self.board.header()[2], slot + 1))
        self.slot_owner[slot] = group
        pid = self._fork(slot, limits, group)
        started = time.monotonic()
        recycle_at = started + _jittered(self.config.max_age) if self.config.max_age else None
        child = Child(pid, slot, self.generation, started, identities.ProcessIdentity.of(pid), limits, recycle_at,
                      dedicated_to=group)
        self.children[pid] = child
        log.debug("spawned child %d in slot %d", pid, slot)
        self._record_processes()
        return child

    def _retire(self, child: Child) -> None:
        """Ask CHILD to finish its job and leave (graceful_timeout, then KILL)."""
        child.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self._signal(child.pid, signal.SIGTERM)

    def _kill(self, child: Child, because: str) -> None:
        if child.killed_because is not None:
            return
        child.killed_because = because
        info = self.board.read(child.slot)
        if because != KILLED_STOP and info.state == ChildState.BUSY and info.pid == child.pid:
            # Recorded before the kill: whoever gets the job next learns why.
            self._record_poison(child, info, f"killed ({because})")
        self._kill_group(child.pid)

    # --- watching the children ------------------------------------------------

    def _watch(self) -> None:
        """Kill children that are hung, past their time limit, or too slow to stop."""
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.killed_because is not None:
                continue
            info = self.board.read(child.slot)
            doing = f"busy with task {info.task} job {info.job_handle}" if info.state == ChildState.BUSY else "idle"
            if child.stop_deadline is not None and now >= child.stop_deadline:
                log.warning("child %d did not stop within graceful_timeout %g s (%s); killing it",
                            child.pid, self.config.graceful_timeout, doing)
                self._kill(child, KILLED_STOP)
            elif self._silent(info, now):
                log.error("child %d is hung: no heartbeat for %.1f s (%s); killing it",
                          child.pid, now - info.heartbeat, doing)
                self._kill(child, KILLED_HUNG)
            elif info.state == ChildState.BUSY and info.deadline and now > info.deadline + self.config.kill_grace:
                log.error("child %d ran task %s job %s past its time limit of %g s and did not give up "
                          "within kill_grace %g s; killing it", child.pid, info.task, info.job_handle,
                          info.deadline - info.busy_since, self.config.kill_grace)
                self._kill(child, KILLED_TIMEOUT)
            elif info.state == ChildState.BUSY:
                self._warn_long_job(child, info, now)

    def _warn_long_job(self, child: Child, info: SlotInfo, now: float) -> None:
        """Once per job: a job without a time limit gives no other sign."""
        limit = self.config.long_job_warning
        if limit and now - info.busy_since > limit and child.warned_long_job != info.job_handle:
            child.warned_long_job = info.job_handle
            log.warning("child %d has been busy with task %s job %s for %.0f s (long_job_warning %g s)",
                        child.pid, info.task, info.job_handle, now - info.busy_since, limit)

    def _silent(self, info: SlotInfo, now: float) -> bool:
        """No heartbeat for heartbeat_timeout. A child busy with a task that
        has a time limit does not beat (see child.py): its deadline watches it."""
        if not self.config.heartbeat_timeout or (info.state == ChildState.BUSY and info.deadline):
            return False
        return now - info.heartbeat > self.config.heartbeat_timeout

    # --- reaping ------------------------------------------------------------

    def _reap(self, block: bool = False) -> None:
        changed = False
        while self.children:
            reaped = self._wait(block)
            if reaped is None:
                break
            pid, status = reaped
            child = self.children.pop(pid, None)
            if child is None:  # an adopted orphan of a task: its own children come to us now
                self._orphans_possible = True
                continue
            self._on_child_exit(child, status)
            changed = True
        if changed:
            self._record_processes()

    def _on_child_exit(self, child: Child, status: int) -> None:
        info = self.board.read(child.slot)
        self._orphans_possible = True  # its group is gone (see _wait), but not what left the group
        how = f"killed ({child.killed_because})" if child.killed_because else describe_exit(status)
        if not self.stopping and child.stop_deadline is None and not child.poison_recorded \
                and info.state == ChildState.BUSY and info.pid == child.pid:
            self._record_poison(child, info, how)
        # After the poison record, never before: see poison.py.
        self.board.clear(child.slot)
        self.stats.retire(child.slot)
        # Its group is dead (see _wait) and what it forked elsewhere is ours to stop (_stop_orphans).
        strays.forks_file(self.config.state_dir, self.config.name, child.pid).unlink(missing_ok=True)
        reason = exit_reason(child, status, self.stopping)
        self.child_exits[reason] += 1
        if child.stop_deadline is not None or self.stopping:
            log.info("child %d stopped (%s)", child.pid, how)
            return
        lived = time.monotonic() - child.started
        crash_loop = reason == "crash" and lived < CRASH_LOOP_LIFETIME
        if info.registered_once and not crash_loop:
            self.slot_backoff.pop(child.slot, None)
            log.warning("child %d %s after %.1f s; replacing it", child.pid, how, lived)
            return
        backoff = self.slot_backoff.setdefault(child.slot, Backoff(CRASH_BACKOFF_FIRST, CRASH_BACKOFF_MAX,
                                                                   immediate_first=True))
        delay = backoff.next()
        self.slot_not_before[child.slot] = time.monotonic() + delay
        log.error("child %d %s after %.1f s %s (crash %d in a row in slot %d); replacing it in %.2f s", child.pid,
                  how, lived, "once registered" if info.registered_once else "before it ever registered",
                  backoff.failures, child.slot, delay)

    def _record_poison(self, child: Child, info: SlotInfo, how: str) -> None:
        child.poison_recorded = True
        entry = self.ledger.record(info.server, info.job_handle.encode(), child.pid, how)
        self.board.publish_poisoned(self.ledger.entries())
        log.error("child %d %s while running task %s job %s; that job has now killed %d child(ren) "
                  "(poison_kills %d)", child.pid, how, info.task, info.job_handle, entry.kills,
                  self.config.poison_kills)

    def _stop_orphans(self) -> None:
        """Kill processes our children's tasks left behind (adopted by us,
        the subreaper) that escaped their child's process group."""
        self._orphans_possible = False
        for pid in self._adopted():
            log.warning("killing process %d, left behind by a task", pid)
            self._signal(pid, signal.SIGKILL)

    # --- the process table (what tests replace with fakes) ----------------------

    def _fork(self, slot: int, limits: Limits, group: str | None) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        with self.fork_lock:
            pid = os.fork()
        if pid == 0:
            code = self._become_child(slot, limits, group)
            logging.shutdown()
            os._exit(code)
        # Both sides set the process group, so it exists before either uses it.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        return pid

    def _become_child(self, slot: int, limits: Limits, group: str | None) -> int:
        try:
            # SIGKILL, not TERM: even a wedged child must not outlive its
            # master; gearmand hands a dead worker's job to another worker.
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.pid:
                return 0  # the master died before the death signal was armed
            os.setpgid(0, 0)  # our own group: the task's processes die with us
            logsetup.set_role(f"child {slot}")
            signal.set_wakeup_fd(-1)
            for fd in (self._wake_r, self._wake_w, self._events_r):
                os.close(fd)
            self.pidfile.close_inherited()
            if self.handover is not None:
                self.handover.close()
            if self.successor is not None:
                self.successor.close()
            if self.control is not None:
                self.control.forget_in_child()
            counter = None
            if self.exporter is not None:
                self.exporter.forget_in_child()
                counter = self.stats.counter(slot)
            names = [group] if group is not None else self.config.shared_tasks()
            worker = Worker(self.config, {name: self.tasks[name] for name in names}, self.board,
                            self.board.writer(slot, os.getpid()), self.pid, self._events_w, limits, counter,
                            titles.child(slot, self.config.name, group),
                            StrayLog(strays.forks_file(self.config.state_dir, self.config.name, os.getpid())))
            return run_child(worker)
        except BaseException:
            log.exception("child failed to start")
            return 1

    def _signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)  # a dead, unreaped child is still our zombie: its PID is not reused

    def _kill_group(self, pid: int) -> None:
        """SIGKILL child PID (not yet reaped) and every process in its group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._signal(pid, signal.SIGKILL)  # in case it died before its group existed

    def _wait(self, block: bool) -> tuple[int, int] | None:
        """Reap one exited process. A child's process group is killed while
        the child is still a zombie: until it is reaped, its PID, and so its
        group's ID, cannot belong to anyone else."""
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            exited = os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:
            return None
        if exited is None:
            return None
        if exited.si_pid in self.children:
            self._kill_group(exited.si_pid)
        return os.waitpid(exited.si_pid, 0)

    def _adopted(self) -> set[int]:
        return procfs.children_of(self.pid) - set(self.children)

    # --- reporting ----------------------------------------------------------------

    def _registered(self, child: Child) -> bool:
        info = self.board.read(child.slot)
        return info.registered_with != 0 and info.state in (ChildState.IDLE, ChildState.BUSY)

    def registered_count(self) -> int:
        return sum(self._registered(c) for c in self._live())

    def _report(self) -> None:
        registered = self.registered_count()
        wanted = sum(self.groups().values())
        if not self.ready and not self.stopping and registered >= wanted:
            self.ready = True
            log.info("pool ready: %d children registered", registered)
            self._announce_ready()
        elif self.handover is not None:
            self._taken_over()
        if not self.stopping:
            busy = sum(1 for c in self.children.values() if self.board.read(c.slot).state == ChildState.BUSY)
            self.notifier.status(f"{registered}/{wanted} children registered, {busy} busy")

    def _record_processes(self) -> None:
        if self.handed_over:
            return  # the processes file is our successor's now
        me = identities.ProcessIdentity.of(self.pid)
        assert me is not None
        self.inherited = [identity for identity in self.inherited if identity.is_alive()]
        children = [c.identity for c in self.children.values() if c.identity is not None] + self.inherited
        identities.write(self.config.processes_file, identities.PoolProcesses(
            pool=self.config.name, boot_id=identities.boot_id(), master=me, children=children))
