"""The master: forks the children, keeps the wanted number alive and
registered, and stops them. Signal handlers and the control listener only
enqueue; every decision is taken in the main loop."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import config as configuration
from . import log as logsetup
from . import runtime, state
from .child import Worker, run_child
from .notify import Notifier
from .pidfile import PidFile
from .scoreboard import Scoreboard, State
from .tasks import TaskLoadError, load_tasks

log = logging.getLogger("gearman_workers.master")

MIN_UPTIME = 2.0  # a child that dies younger than this counts as a crash
MAX_BACKOFF = 30.0
PR_SET_PDEATHSIG = 1


class Control(Protocol):
    """What the master needs of a fleet-control listener (see control/)."""

    def start(self, arbiter: Arbiter) -> None: ...
    def stop(self) -> None: ...
    def forget_in_child(self) -> None: ...


@dataclasses.dataclass
class Child:
    pid: int
    slot: int
    generation: int
    started: float
    identity: state.ProcessIdentity | None
    stop_deadline: float | None = None
    killed: bool = False


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def set_parent_death_signal(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class Arbiter:
    def __init__(self, config: configuration.Config, tasks: dict[str, Callable[..., Any]],
                 pidfile: PidFile, notifier: Notifier | None = None, control: Control | None = None) -> None:
        self.config = config
        self.tasks = tasks
        self.pidfile = pidfile
        self.notifier = notifier or Notifier()
        self.control = control
        self.board = Scoreboard(configuration.MAX_PROCESSES + 1)
        self.children: dict[int, Child] = {}
        self.desired = config.processes
        self.generation = 0
        self.signals: list[int] = []
        self.commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.stopping = False
        self.exit_status = 0
        self.crashes = 0
        self.next_spawn_at = 0.0
        self.ready = False
        self.pid = os.getpid()
        self.started_at = time.time()
        # Held around fork(), and by the control thread whenever it is not
        # just waiting: a child must never inherit a lock (an import's, a
        # stream's) that thread held at the moment of the fork.
        self.fork_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._events_r, self._events_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- what other threads may call ------------------------------------

    def submit(self, *command: Any) -> None:
        """Queue a command (('exit', why), ('scale', n), ('data', values))."""
        self.commands.put(command)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"c")

    def summary(self) -> dict[str, Any]:
        return {"pid": self.pid, "children": len(self.children), "desired": self.desired,
                "registered": self.registered_count(), "started": self.started_at}

    # --- the main loop ------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        gc.freeze()  # keep the collector off preloaded objects: pages stay shared
        self.notifier.send(mainpid=self.pid, status="starting children")
        self._write_state()
        if self.control is not None:
            self.control.start(self)
        log.info("master %d starting %d children for tasks %s on %s", self.pid, self.desired,
                 ", ".join(self.tasks), ", ".join(map(str, self.config.servers)))
        try:
            while not (self.stopping and not self.children):
                self._handle_signals()
                self._handle_commands()
                self._reap()
                if not self.stopping:
                    self._maintain()
                self._murder_overdue()
                self._report()
                self._sleep()
        finally:
            self._shutdown()
        log.info("master %d exits with status %d", self.pid, self.exit_status)
        return self.exit_status

    def _sleep(self) -> None:
        timeout = 1.0
        now = time.monotonic()
        if self.next_spawn_at > now:
            timeout = min(timeout, self.next_spawn_at - now)
        for child in self.children.values():
            if child.stop_deadline is not None and not child.killed:
                timeout = min(timeout, child.stop_deadline - now)
        if self.signals or not self.commands.empty():
            timeout = 0
        try:
            readable, _, _ = select.select([self._wake_r, self._events_r], [], [], max(0.0, timeout))
        except InterruptedError:
            return
        for fd in readable:
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def _shutdown(self) -> None:
        if self.control is not None:
            self.control.stop()
        for child in list(self.children.values()):
            self._signal(child, signal.SIGKILL)
        self._reap(block=True)
        self.config.state_file.unlink(missing_ok=True)
        self.notifier.send(status="stopped")

    # --- signals and commands ---------------------------------------------

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                    signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(sig, self._enqueue_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stop(graceful=not (self.stopping and sig == signal.SIGINT), why=signal.Signals(sig).name)
            elif sig == signal.SIGQUIT:
                self.stop(graceful=False, why="SIGQUIT")
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGTTIN:
                self.scale(self.desired + 1)
            elif sig == signal.SIGTTOU:
                self.scale(max(0, self.desired - 1))

    def _handle_commands(self) -> None:
        while not self.commands.empty():
            command, *args = self.commands.get_nowait()
            if command == "exit":
                self.stop(graceful=True, why=args[0] if args else "exit command")
            elif command == "scale":
                self.scale(int(args[0]))
            elif command == "data":
                self.publish_data(args[0])

    # --- actions ------------------------------------------------------------

    def stop(self, graceful: bool, why: str) -> None:
        if not self.stopping:
            log.info("%s: stopping %s", why, "gracefully" if graceful else "now")
            self.notifier.send(stopping=1, status=f"stopping ({why})")
        self.stopping = True
        for child in self.children.values():
            if not graceful:
                self._signal(child, signal.SIGKILL)
                child.killed = True
            elif child.stop_deadline is None:
                self._retire(child)

    def scale(self, processes: int) -> None:
        processes = max(0, min(configuration.MAX_PROCESSES, processes))
        if processes != self.desired:
            log.info("scaling from %d to %d children", self.desired, processes)
            self.desired = processes

    def reload(self) -> None:
        try:
            fresh = configuration.reload(self.config)
            tasks = load_tasks(fresh)
        except (configuration.ConfigError, TaskLoadError) as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        logging.getLogger().setLevel(fresh.log_level.upper())
        self.config, self.tasks, self.desired = fresh, tasks, fresh.processes
        self.generation += 1
        log.info("configuration reloaded; replacing the children one at a time")

    def publish_data(self, values: dict[str, Any]) -> None:
        """New runtime data: children pick it up before their next job."""
        if values == runtime.snapshot() and self.config.runtime_file.exists():
            return
        state.atomic_write(self.config.runtime_file, json.dumps(values, sort_keys=True))
        runtime.replace(values)  # children forked from now on start with it
        self.board.data_version += 1

    # --- children -------------------------------------------------------------

    def _maintain(self) -> None:
        live = [c for c in self.children.values() if c.stop_deadline is None]
        current = [c for c in live if c.generation == self.generation]
        stale = [c for c in live if c.generation != self.generation]
        if stale:
            # Rolling replacement: one new child, registered, before each old one goes.
            if all(self._registered(c) for c in current):
                if len(live) > self.desired:
                    self._retire(self._pick_retiree(stale))
                else:
                    self._spawn_if_due()
            return
        missing = self.desired - len(live)
        for _ in range(missing):
            if not self._spawn_if_due():
                break
        for _ in range(-missing):
            self._retire(self._pick_retiree(live))
            live = [c for c in self.children.values() if c.stop_deadline is None]

    def _pick_retiree(self, candidates: list[Child]) -> Child:
        """Prefer an idle child, then the youngest."""
        def busy(child: Child) -> bool:
            return self.board.read(child.slot).state == State.BUSY
        return min(candidates, key=lambda c: (busy(c), -c.started))

    def _spawn_if_due(self) -> bool:
        if time.monotonic() < self.next_spawn_at:
            return False
        self.spawn()
        return True

    def spawn(self) -> Child:
        slot = self._free_slot()
        self.board.clear(slot)
        sys.stdout.flush()
        sys.stderr.flush()
        with self.fork_lock:
            pid = os.fork()
        if pid == 0:
            code = self._become_child(slot)
            logging.shutdown()
            os._exit(code)
        child = Child(pid, slot, self.generation, time.monotonic(), state.ProcessIdentity.of(pid))
        self.children[pid] = child
        log.debug("spawned child %d in slot %d", pid, slot)
        self._write_state()
        return child

    def _become_child(self, slot: int) -> int:
        try:
            # SIGKILL, not TERM: even a wedged child must not outlive its
            # master; gearmand hands a dead worker's job to another worker.
            set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != self.pid:
                return 0  # the master died before the death signal was armed
            logsetup.set_role(f"child {slot}")
            signal.set_wakeup_fd(-1)
            for fd in (self._wake_r, self._wake_w, self._events_r):
                os.close(fd)
            self.pidfile.close_inherited()
            if self.control is not None:
                self.control.forget_in_child()
            self.board.reset(slot, os.getpid())
            worker = Worker(self.config, self.tasks, self.board, self.board.writer(slot),
                            self.pid, self._events_w)
            return run_child(worker)
        except BaseException:
            log.exception("child failed to start")
            return 1

    def _free_slot(self) -> int:
        used = {child.slot for child in self.children.values()}
        return next(i for i in range(self.board.slots) if i not in used)

    def _retire(self, child: Child) -> None:
        child.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self._signal(child, signal.SIGTERM)

    def _signal(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass  # already dead, not yet reaped: it is still our zombie, PID not reused

    def _murder_overdue(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.stop_deadline is not None and not child.killed and now >= child.stop_deadline:
                log.warning("child %d did not stop within %.0f s; killing it", child.pid,
                            self.config.graceful_timeout)
                self._signal(child, signal.SIGKILL)
                child.killed = True

    def _reap(self, block: bool = False) -> None:
        changed = False
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is not None:
                self._on_child_exit(child, status)
                changed = True
        if changed:
            self._write_state()

    def _on_child_exit(self, child: Child, status: int) -> None:
        self.board.clear(child.slot)
        how = describe_exit(status)
        if child.stop_deadline is not None or self.stopping:
            log.info("child %d stopped (%s)", child.pid, how)
            return
        lived = time.monotonic() - child.started
        if lived < MIN_UPTIME:
            self.crashes += 1
            delay = 0.0 if self.crashes == 1 else min(MAX_BACKOFF, 0.25 * 2 ** (self.crashes - 2))
            self.next_spawn_at = time.monotonic() + delay
            log.error("child %d %s after %.1f s (crash %d in a row); replacing it in %.1f s",
                      child.pid, how, lived, self.crashes, delay)
        else:
            self.crashes = 0
            log.warning("child %d %s after %.0f s; replacing it", child.pid, how, lived)

    # --- reporting ----------------------------------------------------------------

    def _registered(self, child: Child) -> bool:
        info = self.board.read(child.slot)
        return info.links_up > 0 and info.state in (State.IDLE, State.BUSY)

    def registered_count(self) -> int:
        # list() copies atomically: the control thread calls this too.
        return sum(1 for c in list(self.children.values()) if c.stop_deadline is None and self._registered(c))

    def _report(self) -> None:
        registered = self.registered_count()
        if not self.ready and not self.stopping and registered >= self.desired:
            self.ready = True
            log.info("pool ready: %d children registered", registered)
            self.notifier.send(ready=1)
        if not self.stopping:
            busy = sum(1 for c in self.children.values() if self.board.read(c.slot).state == State.BUSY)
            self.notifier.status(f"{registered}/{self.desired} children registered, {busy} busy")

    def _write_state(self) -> None:
        me = state.ProcessIdentity.of(self.pid)
        assert me is not None
        children = [c.identity for c in self.children.values() if c.identity is not None]
        state.write(self.config.state_file, state.PoolState(
            pool=self.config.name, boot_id=state.boot_id(), pidfile=str(self.pidfile.path),
            master=me, children=children))
