"""The master: keeps the wanted number of children alive and registered,
and stops them. It only decides, in its main loop, in short methods (spawn,
retire, recycle, kill, reap, back off); signal handlers and other threads
only put commands in its inbox (commands.py), and read it through its view
(views.py). Its parts act (parts.py): the process table forks and kills;
the child's kit builds the child on the child's side of the fork
(bootstrap.py); the rules for one child are children.py's. Tests drive the
decisions with a fake process table (tests/test_master.py). How the pool
outlives task code is told in docs/design.md.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import children as rules
from . import config as configuration
from . import log as logsetup
from .autoscale import Autoscaler, QueueDepth, reconfigured
from .bootstrap import ChildKit, ReloadFailed
from .children import EXIT_REASONS, KILLED_CANCEL, KILLED_STOP, Child, SlotBackoffs
from .commands import (
    FROM_SIGNAL,
    CancelJob,
    Ignored,
    Inbox,
    OffersChanged,
    PauseTasks,
    PublishData,
    QueueSeen,
    Reload,
    ReopenLogs,
    Scale,
    Stop,
    Upgrade,
)
from .gearmand_admin import cancel_job
from .hooks import Pool
from .parts import Parts
from .poison import PoisonLedger
from .scoreboard import ChildState, Scoreboard, SlotInfo
from .taskctl.steering import Unsteered
from .taskctl.switchboard import OFFERS_SIGNAL
from .views import ChildView, MasterView, registered_count, status_line

log = logging.getLogger("gearman_workers.master")

DROP_TIMEOUT = 1.0  # gearmand's answer to `cancel job` (loopback or LAN: milliseconds)


class Master:
    def __init__(self, config: configuration.Config, tasks: dict[str, Callable[..., Any]], parts: Parts) -> None:
        self.config, self.parts = config, parts
        self.pid, self.started_at, self.started = os.getpid(), time.time(), time.monotonic()
        self.board = Scoreboard(configuration.MAX_PROCESSES + 1)
        self.inbox = Inbox()
        self.kit = ChildKit(config, tasks, self.board, self.inbox.nudge_fd, parts.exporter is not None)
        forgotten = (self.inbox, parts.upgrades, parts.control, parts.exporter, parts.keeper, parts.governor)
        self.kit.forgotten += [part for part in forgotten if part]
        self.steering = parts.steering or Unsteered()  # its calls need no test for fleet control
        self.kit.switchboard = self.steering.board
        self.stats = self.kit.stats
        self.view = MasterView(self, self.inbox, parts.processes.fork_lock, parts.upgrades.control_since,
                               parts.control, parts.keeper, parts.steering, parts.watcher)
        self.children: dict[int, Child] = {}
        self.child_exits = dict.fromkeys(EXIT_REASONS, 0)
        self.desired = config.processes  # shared children; dedicated ones are config.dedicated()
        self.autoscaler = Autoscaler(*config.bounds(), config.scale_down_after) if config.autoscaling else None
        self.slot_owner: dict[int, str | None] = {}  # a slot, once used, serves one group: its back-off is that group's
        self.backoffs = SlotBackoffs()
        self.ledger = PoisonLedger()
        self.generation = 0
        self.stopping = self.ready = self._orphans_possible = self._ready_hook_called = False

    # --- the main loop ------------------------------------------------------

    def run(self) -> int:
        # systemd's watchdog ends a wedged master with SIGABRT: the journal
        # then shows where every thread was stuck.
        faulthandler.enable()
        self._install_signals()
        self.parts.processes.prepare(self.config.servers)
        gc.freeze()  # keep the collector off preloaded objects: pages stay shared
        self.parts.title.show()
        self.parts.upgrades.starting_as_successor()
        self.parts.systemd.send(mainpid=self.pid, status="starting children")
        self._record_processes()
        if self.parts.control is not None:  # before the first fork
            self.steering.pause(self.parts.control.initial_pauses())
        self._start_threads()
        log.info("master %d starting %d children for tasks %s on %s%s", self.pid,
                 self.groups_wanted(), ", ".join(self.kit.tasks),
                 ", ".join(map(str, self.config.servers)),
                 "".join(f"; {n} of them only for {task}" for task, n in self.config.dedicated().items()))
        try:
            while True:
                self.step()
                if self.stopping and not self.children:
                    break  # at once: no wait after the last child
                self._sleep()
        finally:
            self._shutdown()
            self.kit.hooks.call_bounded("master_exit", self._as_pool())
        log.info("master %d exits with status 0", self.pid)
        return 0  # a stop asked for: every other end is an exception

    def _start_threads(self) -> None:
        parts = self.parts
        if parts.control is not None:
            parts.control.start(self.view)
        if parts.exporter is not None:
            parts.exporter.start(self.view, self.config.name, self.config.hostname, parts.processes.fork_lock)
        if parts.watcher is not None:
            parts.watcher.start(self.view)
        if parts.keeper is not None:
            parts.keeper.start(self.view)
        if parts.governor is not None:
            parts.governor.start(self.view)

    def step(self) -> None:
        """One turn of the main loop, without the wait."""
        self.parts.systemd.kick_watchdog()  # from here only: a wedged loop is what systemd must notice
        self._handle_commands()
        self._check_upgrade()
        self._reap()
        if not self.stopping:
            self._maintain()
        self._watch()
        if self._orphans_possible:
            self._stop_orphans()
        self._report()

    def _sleep(self) -> None:
        if not self.inbox.empty():
            return
        upgrade_fd = self.parts.upgrades.wait_fd()
        waiting_on = [*self.inbox.fds(), *([upgrade_fd] if upgrade_fd >= 0 else [])]
        try:
            readable, _, _ = select.select(waiting_on, [], [], self._next_check_in())
        except InterruptedError:
            return
        for fd in readable:
            if fd != upgrade_fd:  # the successor's word is read by _check_upgrade
                self.inbox.drain(fd)

    def _next_check_in(self) -> float:
        """Seconds until something is due: a respawn, a stop or time-limit
        deadline, a heartbeat check."""
        now = time.monotonic()
        due = [now + min(1.0, self.config.heartbeat_timeout / 4 or 1.0), *self.backoffs.due(now)]
        due += [t for t in (self.parts.systemd.watchdog_due(), self.parts.upgrades.deadline()) if t is not None]
        for child in self.children.values():
            due += rules.due_times(child, self.board.read(child.slot), self.config.kill_grace)
        return max(0.0, min(due) - now)

    def _shutdown(self) -> None:
        if self.parts.control is not None and not self.parts.upgrades.handed_over:
            self.parts.control.stop()
        for child in list(self.children.values()):
            self.parts.processes.kill_group(child.pid)
        self._reap(block=True)
        self._stop_orphans()
        if not self.parts.upgrades.handed_over:  # else the file is our successor's now
            self.config.processes_file.unlink(missing_ok=True)
        self.parts.systemd.send(status="stopped")

    # --- signals and commands ---------------------------------------------

    def _install_signals(self) -> None:
        for sig in FROM_SIGNAL:
            signal.signal(sig, self._enqueue_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # its wake-up ends the wait; the loop reaps
        signal.signal(OFFERS_SIGNAL, signal.SIG_IGN)  # a child takes it from birth: not fatal before its handler
        signal.set_wakeup_fd(self.inbox.wake_fd, warn_on_full_buffer=False)

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.inbox.put_from_signal(FROM_SIGNAL[signum])

    def _handle_commands(self) -> None:
        for command in self.inbox.taken():
            if isinstance(command, Stop):
                hurry = command.hurry_if_stopping and self.stopping
                self.stop(graceful=command.graceful and not hurry, why=command.why)
            elif isinstance(command, Reload):
                self.reload()
            elif isinstance(command, Upgrade):
                self.upgrade()
            elif isinstance(command, ReopenLogs):
                self.reopen_logs()
            elif isinstance(command, Ignored):
                log.warning("%s means nothing to gearman-workers; ignored", command.signal)
            elif isinstance(command, Scale):
                # TTOU stops at one child: an empty pool only when asked by number (gm-ctl scale 0 --allow-zero)
                by = max(min(1, self.desired), self.desired + command.by)
                self.scale(command.to if command.to is not None else by)
            elif isinstance(command, PublishData):
                self.kit.publish_data(command.values)
            elif isinstance(command, QueueSeen):
                self.autoscale(command.depth)
            else:
                self._steer(command)

    def _steer(self, command: PauseTasks | OffersChanged | CancelJob) -> None:
        """The task control commands (taskctl/)."""
        if isinstance(command, PauseTasks):
            self._tell_offers(self.steering.pause(command.paused))
        elif isinstance(command, OffersChanged):
            self._tell_offers(command.slots)
        elif isinstance(command, CancelJob):
            self.cancel(command)

    # --- actions ------------------------------------------------------------

    def stop(self, graceful: bool, why: str) -> None:
        if not self.stopping:
            log.info("%s: stopping %s", why, "gracefully" if graceful else "now")
            self.parts.title.show("stopping")
            self.parts.systemd.send(stopping=1, status=f"stopping ({why})")
        self.stopping = True
        if self.parts.watcher is not None:
            self.parts.watcher.stop()
        if self.parts.keeper is not None:
            self.parts.keeper.stop()
        self.parts.upgrades.abandon("the pool is stopping")
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
            fresh = self.kit.reload()
        except ReloadFailed as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        logging.getLogger().setLevel(fresh.log_level.upper())
        self.config = fresh
        self.steering.configure(fresh)
        watcher = self.parts.watcher
        if fresh.autoscaling and watcher is None:
            log.warning("min_processes and max_processes take effect at the next restart: this master was "
                        "started without autoscaling, so nothing watches gearmand's queue")
        if not (fresh.autoscaling and self.autoscaler is not None):  # else keep the capacity: decide from here
            self.desired = fresh.processes
        self.autoscaler = reconfigured(self.autoscaler, fresh, watching=watcher is not None)
        if watcher is not None:
            watcher.configure(fresh.servers, fresh.shared_tasks(), list(fresh.tasks))
        self.generation += 1
        log.info("configuration reloaded; replacing the children one at a time")

    def reopen_logs(self) -> None:
        log.info("SIGUSR1: %s; the children reopen theirs", logsetup.reopen())
        for child in self._live():
            self.parts.processes.signal(child.pid, signal.SIGUSR1)

    def cancel(self, order: CancelJob) -> None:
        """Tell the child running the job to give it up (control/cancel.py);
        _watch kills it if it has not after kill_grace."""
        child = self.children.get(order.pid)
        if child is None or child.slot != order.slot:
            return
        child.cancelling = order.handle
        child.cancel_deadline = time.monotonic() + self.config.kill_grace
        self.steering.ask_cancel(child.slot, order.handle.encode())
        self.parts.processes.signal(child.pid, OFFERS_SIGNAL)

    def _tell_offers(self, slots: Iterable[int]) -> None:
        """The children in SLOTS have a changed row: they read it now."""
        wanted = set(slots)
        for child in self.children.values():
            if child.slot in wanted and child.killed_because is None:
                self.parts.processes.signal(child.pid, OFFERS_SIGNAL)

    def upgrade(self) -> None:
        """Start a successor on the code and configuration now on disk; hand
        over once its children are registered (handover.py)."""
        if self.stopping:
            log.warning("upgrade asked while the pool is stopping; ignored")
        else:
            self.parts.upgrades.start(self.view)

    def _check_upgrade(self) -> None:
        handed_over = self.parts.upgrades.check(self.view, listen_again=not self.stopping)
        if handed_over:
            self.stop(graceful=True, why=handed_over)

    # --- keeping the pool whole -------------------------------------------------

    def _live(self) -> list[Child]:
        return [c for c in self.children.values() if c.live]

    def _live_in(self, group: str | None) -> list[Child]:
        """The live children of GROUP: a task's dedicated ones, or (None) the shared ones."""
        return [c for c in self._live() if c.dedicated_to == group]

    def _maintain(self) -> None:
        groups = self.config.groups(self.desired)
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
            if sum(self.board.read(c.slot).registered for c in live) > wanted:
                self._retire(self._pick_retiree(outgoing))
            elif len(staying) < wanted and all(self.board.read(c.slot).registered for c in staying):
                self._spawn_missing(1, group)
            return
        missing = wanted - len(live)
        if missing > 0:
            self._spawn_missing(missing, group)
        for _ in range(-missing):
            self._retire(self._pick_retiree(self._live_in(group)))

    def _due_for_replacement(self, child: Child) -> bool:
        if child.replacing_because is None:
            reason = rules.replacement_reason(child, self.board.read(child.slot), self.config, self.generation,
                                              time.monotonic())
            if reason is None:
                return False
            child.replacing_because = reason
            log.info("child %d is due for replacement (%s); starting its successor", child.pid, reason)
        return True

    def _pick_retiree(self, candidates: list[Child]) -> Child:
        """Prefer an idle child, then the youngest."""
        return min(candidates, key=lambda c: (self.board.read(c.slot).state == ChildState.BUSY, -c.started))

    def _spawn_missing(self, count: int, group: str | None = None) -> None:
        """Fill GROUP's COUNT lowest free slots whose crash back-off is over."""
        used = {child.slot for child in self.children.values()}
        free = [slot for slot in range(self.board.slots)
                if slot not in used and self.slot_owner.get(slot, group) == group][:count]
        now = time.monotonic()
        for slot in free:
            if self.backoffs.ready(slot, now):
                self.spawn(slot, group)

    def spawn(self, slot: int, group: str | None = None) -> Child:
        limits = rules.limits_for(self.config)
        self.board.reset(slot)  # before the fork: the master must never read the last owner's heartbeat
        self.steering.prepare(slot, self.kit.task_names(group))  # its row too: the child reads it as it starts
        self.board.set_slots_in_use(max(self.board.slots_in_use, slot + 1))
        self.slot_owner[slot] = group
        pid = self.parts.processes.fork(lambda: self.kit.become_child(slot, limits, group))
        self.steering.born(slot, pid)
        started = time.monotonic()
        recycle_at = started + rules.jittered(self.config.max_age) if self.config.max_age else None
        child = Child(pid, slot, self.generation, started, limits, recycle_at, dedicated_to=group)
        self.children[pid] = child
        log.debug("spawned child %d in slot %d", pid, slot)
        self._record_processes()
        return child

    def _retire(self, child: Child) -> None:
        """Ask CHILD to finish its job and leave (graceful_timeout, then KILL)."""
        child.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self.steering.leaving(child.slot)
        self.parts.processes.signal(child.pid, signal.SIGTERM)

    def _kill(self, child: Child, because: str) -> None:
        if child.killed_because is not None:
            return
        child.killed_because = because
        self.steering.leaving(child.slot)
        info = self.board.read(child.slot)
        if because != KILLED_STOP and info.state == ChildState.BUSY and info.pid == child.pid:
            # Recorded before the kill: whoever gets the job next learns why.
            self._record_poison(child, info, f"killed ({because})")
        self.parts.processes.kill_group(child.pid)

    # --- watching the children ------------------------------------------------

    def _watch(self) -> None:
        """Kill children that are hung, past their time limit, or too slow to stop."""
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.killed_because is not None:
                continue
            info = self.board.read(child.slot)
            verdict = rules.kill_verdict(child, info, self.config, now)
            if verdict is not None and verdict[0] == KILLED_CANCEL:
                log.error("%s", verdict[1])
                self._drop_from_gearmand(info)
                self._kill(child, KILLED_CANCEL)
            elif verdict is not None:
                why, message = verdict
                (log.warning if why == KILLED_STOP else log.error)("%s", message)
                self._kill(child, why)
            elif (nudge := rules.unblock_signal(child, info, now)) is not None:
                self.parts.processes.signal(child.pid, nudge)
            elif (warning := rules.long_job_warning(child, info, self.config.long_job_warning, now)) is not None:
                log.warning("%s", warning)

    def _drop_from_gearmand(self, info: SlotInfo) -> None:
        """A cancelled job whose child is about to be killed: gearmand must
        not hand it out again (its client gets gearmand's failure)."""
        server = self.config.servers[info.server] if info.server < len(self.config.servers) else None
        if server is None:
            return
        try:
            cancel_job(server.host, server.port, info.job_handle, DROP_TIMEOUT)
        except OSError as err:
            log.warning("gearmand %s was not told to drop cancelled job %s (%s); a child that gets it again "
                        "refuses it", server, info.job_handle, err)

    # --- reaping ------------------------------------------------------------

    def _reap(self, block: bool = False) -> None:
        changed = False
        while self.children:
            reaped = self.parts.processes.wait(block, self.children)
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
        self._orphans_possible = True  # its group is gone (see wait), but not what left the group
        how = f"killed ({child.killed_because})" if child.killed_because else rules.describe_exit(status)
        if not self.stopping and child.stop_deadline is None and not child.poison_recorded \
                and info.state == ChildState.BUSY and info.pid == child.pid:
            self._record_poison(child, info, how)
        # After the poison record, never before: see poison.py.
        self.board.clear(child.slot)
        self.steering.gone(child.slot)
        self.stats.retire(child.slot)
        reason = rules.exit_reason(child, status, self.stopping)
        self.child_exits[reason] += 1
        if child.stop_deadline is not None or self.stopping:
            log.info("child %d stopped (%s)", child.pid, how)
            return
        lived = time.monotonic() - child.started
        waits = self.backoffs.after_death(child.slot, info.registered_once, reason, lived, time.monotonic())
        if waits is None:
            log.warning("child %d %s after %.1f s; replacing it", child.pid, how, lived)
            return
        delay, crashes = waits
        log.error("child %d %s after %.1f s %s (crash %d in a row in slot %d); replacing it in %.2f s", child.pid,
                  how, lived, "once registered" if info.registered_once else "before it ever registered",
                  crashes, child.slot, delay)

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
        for pid in self.parts.processes.adopted(self.children):
            log.warning("killing process %d, left behind by a task", pid)
            self.parts.processes.signal(pid, signal.SIGKILL)

    # --- reporting ----------------------------------------------------------------

    def _report(self) -> None:
        """READY once every child registered, or (a first start, not a
        successor) once they had connect_timeout to try: STATUS then says what they wait for."""
        seen = [ChildView(c, self.board.read(c.slot)) for c in self.children.values()]
        registered, wanted = registered_count(seen), self.groups_wanted()
        tried = time.monotonic() - self.started >= self.config.connect_timeout and not self.parts.upgrades.busy
        if not self.ready and not self.stopping and (registered >= wanted or tried):
            self.ready = True
            log.info("pool ready: %d of %d children registered", registered, wanted)
            self.parts.upgrades.announce_ready()
        else:
            self.parts.upgrades.check_taken_over()
        if not self._ready_hook_called and not self.stopping and registered >= wanted:
            self._ready_hook_called = True
            self.kit.hooks.call("master_ready", self._as_pool())
        if not self.stopping:
            self.parts.systemd.status(status_line(seen, self.config.servers, wanted))

    def _as_pool(self) -> Pool:
        return Pool(self.config.name, self.config.hostname, self.pid, self.config)

    def groups_wanted(self) -> int:
        return sum(self.config.groups(self.desired).values())

    def _record_processes(self) -> None:
        if not self.parts.upgrades.handed_over:  # else the processes file is our successor's now
            self.parts.processes.record(self.children)
