"""A child: one complete Gearman worker with a connection to every gearmand.

Its loop keeps a session with every gearmand (session.py decides what to
send when), registers the tasks and runs the jobs. Around running a
job sit the protections against task code: the soft time limit
(timelimit.py), the poison check (poison.py) and the recycling checks (too
many jobs, too much memory). The loop's heartbeat tells the master that the
child still runs (while a task runs, its time limit or a heartbeat thread
does: see _start_heartbeat); the master kills a child that falls silent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import log as logging_setup
from . import protocol as p
from . import runtime
from .commands import MEANINGLESS_SIGNALS
from .config import Config
from .connection import (
    CONNECTING,
    DOWN,
    DOZING_TIMEOUT,
    NOTHING_READ,
    UP,
    ConnectionLost,
    DescriptorsClosed,
    GearmandConnection,
)
from .hooks import Hooks
from .job import Job, encode_result
from .jobstats import CANCELLED, DONE, FAILED, OUTCOMES, POISON, TIMEOUT, JobCounter
from .poison import KILLED_FOR_CANCEL, KILLED_FOR_TIME, PoisonCheck
from .procfs import resident_bytes
from .scoreboard import DATA_VERSION, IDLE, ChildState, Recycle, Scoreboard, SlotWriter
from .session import Session
from .strays import StrayLog
from .taskctl.cancelled import JobCancelled, cancel_message
from .taskctl.offers import Offers
from .taskctl.switchboard import OFFERS_SIGNAL, Row
from .timelimit import UNBLOCK_SIGNAL, JobTimeout, JobTimer
from .titles import Title

if TYPE_CHECKING:
    from .jobs.runs import JobLife

log = logging.getLogger("gearman_workers.child")

JOB_ASSIGN_UNIQ, NO_JOB, NOOP, WOKEN = p.JOB_ASSIGN_UNIQ, p.NO_JOB, p.NOOP, p.WOKEN  # compared on every read
RECV_BUFFER = 256 * 1024
# The title says "idle" once the child has waited this long for a job: a
# child fed one job at a time keeps "busy TASK" between them instead of
# paying two title changes (each a copy and a system call) per job. A
# dozing child waits in its socket (Worker._wait_dozing), which gives up then.
IDLE_TITLE_AFTER = DOZING_TIMEOUT
EXIT_OK = 0
EXIT_ERROR = 1
# The master's signals, which mean nothing to a child (see master.py).
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2)
# Signals that mean nothing to anyone in the pool: logged and ignored
# (their default would end the child and its job). SIGALRM is the time limit's.
NOTED_SIGNALS = (signal.SIGUSR1, *(sig for sig in MEANINGLESS_SIGNALS if sig != signal.SIGALRM))


class WaitBroken(Exception):
    """A signal came while the child waited in its socket (see Worker._break_wait)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the master decided for this one child (jitter included)."""

    max_jobs: int = 0                # recycle after this many jobs; 0: never
    max_memory: int = 0              # recycle when RSS exceeds this many bytes after a job; 0: never
    heartbeat_interval: float = 0.0  # seconds between heartbeats; 0: no heartbeat
    poison_kills: int = 2            # fail, not run, a job that killed this many children; 0: never
    kill_grace: float = 5.0          # how long past its time limit a job ran before the master killed it


class Route:
    """What the child knows of one task, worked out once: the callable, its
    time limit (0: none), its name, its busy title and its name as the
    slot keeps it."""

    __slots__ = ("call", "field", "life", "limit", "metered", "name", "title")

    def __init__(self, call: Callable[..., Any], limit: float, name: str, life: JobLife | None = None,
                 metered: bool = False) -> None:
        self.call, self.limit, self.name = call, limit, name
        self.title = f"busy {name}"
        self.field = name.encode()  # the slot keeps what fits
        self.life = life  # None: a task whose jobs leave no record (retries and keep_results off)
        self.metered = metered  # its jobs start on permits (a `rate`: taskctl/offers.py)


class Worker:
    """The work loop of one child. ``run()`` returns the exit status."""

    def __init__(self, config: Config, tasks: dict[str, Callable[..., Any]], board: Scoreboard,
                 slot: SlotWriter, master_pid: int, events_fd: int, limits: Limits,
                 counter: JobCounter | None = None, title: Title | None = None,
                 stray_log: StrayLog | None = None, lives: dict[str, JobLife] | None = None,
                 late_life: Callable[[str], JobLife] | None = None, row: Row | None = None,
                 hooks: Hooks | None = None) -> None:
        self.config = config
        self.hooks = hooks or Hooks()
        # Looked at on every job: None unless set, so that an unset hook costs one test.
        self.before_job_hook, self.after_job_hook = self.hooks.before_job, self.hooks.after_job
        lives = lives or {}
        self.stray_log = stray_log
        metered = row.metered if row is not None else frozenset()
        self.routes = {name.encode(): Route(func, config.time_limit(name), name, lives.get(name), name in metered)
                       for name, func in tasks.items()}
        # The job records' one connection (jobs/runs.py): its batch goes out when the child falls idle.
        self.job_records = next(iter(lives.values())).link.records if lives else None
        self.late_life = late_life  # a task's life from its first run the leader submitted (a delayed job)
        self.board = board
        self.slot = slot
        self.master_pid = master_pid
        self.events_fd = events_fd
        self.limits = limits
        self.counter = counter  # None: metrics are off, nothing to count
        self.title = title or Title(f"child [{config.name}]")
        self.recycling_limits = bool(limits.max_jobs or limits.max_memory)
        self.sessions = [Session(GearmandConnection(server, i, config.connect_timeout))
                         for i, server in enumerate(config.servers)]
        self.by_fd: dict[int, Session] = {}
        self.stopping = False
        self.stop_deadline = 0.0  # when stopping: how long the answers to our GRABs may take
        # Taking new jobs: not stopping, and not waiting to be recycled. Read
        # on every job, so an attribute kept by the two that end it (_stop,
        # _check_recycling), not a method.
        self.accepting = True
        self.in_task = False
        self.waiting_in_socket = False  # in _wait_dozing's read: a signal breaks it (see _break_wait)
        # From a job's arrival until its answer is written: a death in
        # between leaves the job in the slot, where the master counts it.
        self.holding_job = False
        self.forked_by_task = False  # set in a process that task code forked (see _forget_pool_after_fork)
        self.noted_signals: list[int] = []  # signals the loop acts on (see _act_on_signals)
        self.idle_title_due = False
        self.header = board.words  # the versions the master bumps (a read is an index)
        self.data_version = self.header[DATA_VERSION]
        self.timer = JobTimer()
        self.poison = PoisonCheck(board)
        # What the master withholds from gearmand (taskctl/): paused tasks, those without a token.
        self.offers = Offers(list(tasks), row)
        self.client_id = p.request(p.SET_CLIENT_ID, f"{config.hostname}:{config.name}:{os.getpid()}".encode())
        self.hello = self.offers.can_do() + self.client_id
        self.job_handle = b""  # the job in hand (what a cancel names)
        self.cancelled = b""  # the job JobCancelled was raised in
        # One receive buffer for the child's life: recv() of a fresh large
        # buffer costs an mmap/mremap/munmap per job.
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self.poller = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- set-up and teardown ------------------------------------------

    def _install_signals(self) -> None:
        for sig in IGNORED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        for sig in NOTED_SIGNALS:
            signal.signal(sig, self._on_noted_signal)
        self.timer.install()
        signal.signal(OFFERS_SIGNAL, self._on_offers_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.poller.register(self._wake_r, select.POLLIN)
        os.register_at_fork(after_in_child=self._forget_pool_after_fork)

    def _forget_pool_after_fork(self) -> None:
        """In a process that task code forked: it must never act as this
        worker. Its copies of the gearmand connections would keep a dead
        child registered (a ghost that takes jobs nobody runs), so they go
        at once; and if the fork returns into our loop, it leaves there."""
        self.forked_by_task = True
        for session in self.sessions:
            if session.link.sock is not None:
                session.link.sock.close()
        for fd in (self._wake_r, self._wake_w, self.events_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in (*IGNORED_SIGNALS, *NOTED_SIGNALS, signal.SIGTERM, signal.SIGALRM, UNBLOCK_SIGNAL,
                    OFFERS_SIGNAL):  # the pool's
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.stray_log is not None:
            self.stray_log.record_self()

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self._stop()
        self._break_wait()

    def _stop(self) -> None:
        """Take no more jobs, and leave once the GRABs out are answered."""
        self.stopping = True
        self.accepting = False

    def _on_noted_signal(self, signum: int, frame: object) -> None:
        self.noted_signals.append(signum)  # acted on by the loop, between jobs: list.append is safe here
        self._break_wait()

    def _break_wait(self) -> None:
        """A signal for the loop came while the loop waits in the socket
        (_wait_dozing): leave that wait, so that the loop acts on it now.
        Once only: the flag goes first."""
        if self.waiting_in_socket:
            self.waiting_in_socket = False
            raise WaitBroken

    def _on_offers_signal(self, signum: int, frame: object) -> None:
        """The master changed our row (taskctl/switchboard.py): offers are
        applied by the loop; a cancel of the job in hand ends its task now."""
        self.noted_signals.append(signum)
        handle = self.job_handle
        if self.in_task and handle != self.cancelled and self.offers.row is not None \
                and self.offers.row.cancel_handle() == handle:
            self.cancelled = handle
            raise JobCancelled(cancel_message(handle.decode(errors="replace")))
        self._break_wait()

    def _act_on_signals(self) -> None:
        """SIGUSR1 (sent on by the master): reopen the log file; OFFERS_SIGNAL:
        offer what the master says; the others: say so."""
        while self.noted_signals:
            signum = self.noted_signals.pop(0)
            if signum == OFFERS_SIGNAL:
                self._apply_offers()
            elif signum == signal.SIGUSR1:
                logging_setup.reopen()
            else:
                log.warning("%s means nothing to gearman-workers; ignored", signal.Signals(signum).name)

    def _start_heartbeat(self) -> None:
        """A busy child cannot beat from its loop. A task with a time limit
        needs no beat: the master kills it at deadline + kill_grace, whatever
        it is stuck in. For tasks without one, a thread vouches while the
        task runs (a long task is not a hung child; a task stuck in C code
        holding the GIL stops the thread too).

        Only then: a second thread costs about 8 % of echo throughput, for
        glibc leaves its single-threaded fast paths (unlocked malloc, no
        cancellation bookkeeping around system calls) once one has existed."""
        interval = self.limits.heartbeat_interval
        if not interval or all(route.limit for route in self.routes.values()):
            return
        # The thread starts with every signal blocked, so that the kernel
        # delivers SIGALRM and SIGTERM to the main thread: a task asleep in
        # a system call must be interrupted, not the heartbeat.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            threading.Thread(target=self._beat, args=(interval,), name="heartbeat", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _beat(self, interval: float) -> None:
        beat = self.slot.beat
        while True:
            if self.in_task:
                beat()
            time.sleep(interval)

    def run(self) -> int:
        self._install_signals()
        self._apply_offers()  # a row the master changed before our handler was there
        self.slot.publish(ChildState.STARTING)
        self.title.show("starting")
        self._start_heartbeat()
        self.hooks.call("post_fork", self)
        try:
            self._loop()
            self._leave_gracefully()
        finally:
            if not self.holding_job:  # else the slot must go on naming the job (see holding_job)
                self.slot.publish(ChildState.STOPPING)
            self.title.show("stopping")
            for session in self.sessions:
                self._drop(session)
        return EXIT_OK

    def _leave_gracefully(self) -> None:
        """The loop ended as asked: no job in hand, no GRAB out. Sessions go first (gearmand hands this
        child nothing more), then the child_exit hook has its bounded time."""
        for session in self.sessions:
            self._drop(session)
        self.hooks.call_bounded("child_exit", self, "recycled" if self.slot.recycle != Recycle.NO else "stopped")

    # --- the loop ---------------------------------------------------------

    def _loop(self) -> None:
        poll = self.poller.poll
        by_fd = self.by_fd
        single = self.sessions[0] if len(self.sessions) == 1 else None
        idle_ms, idle_title_ms = int(self.config.poll_timeout * 1000), int(IDLE_TITLE_AFTER * 1000)
        while True:
            if self.noted_signals:
                self._act_on_signals()
            if self.stopping:
                if self._stopped():
                    return
                timeout = self._poll_timeout_ms()
            elif single is not None and single.link.status == UP:
                if single.awaiting_grab and not single.dozing:
                    # gearmand answers a GRAB at once: skip the poll and wait
                    # in recv (bounded by SO_RCVTIMEO); a signal still stops us
                    # right after the answer.
                    self._on_readable(single)
                    continue
                if single.dozing and self.idle_title_due:
                    self._wait_dozing(single)
                    continue
                timeout = idle_title_ms if self.idle_title_due else idle_ms  # the link is up: nothing else falls due
            else:
                self._connect_due()
                timeout = self._poll_timeout_ms()
            events = poll(timeout)
            if not events:
                self._on_idle_tick()
                continue
            for fd, _mask in events:
                ready = by_fd.get(fd)
                if ready is None:
                    self._drain_wakeups()
                elif ready.link.status == UP:
                    self._on_readable(ready)
                else:
                    self._on_connected(ready)

    def _begin_stopping(self) -> None:
        """Stopping: say so; the deadline for the answers to our GRABs."""
        self.slot.publish(ChildState.STOPPING)
        self.title.show("stopping")
        self.stop_deadline = time.monotonic() + self.config.connect_timeout

    def _stopped(self) -> bool:
        """No GRAB left unanswered (a job it brings must not go to a child
        that leaves), or no more waiting for one."""
        if not self.stop_deadline:
            self._begin_stopping()
        for session in self.sessions:
            self._settle_low_water(session)  # the NO_JOB we wait for must wake us now
        return not any(s.awaiting_grab for s in self.sessions) or time.monotonic() > self.stop_deadline

    def _poll_timeout_ms(self) -> int:
        timeout = IDLE_TITLE_AFTER if self.idle_title_due else self.config.poll_timeout
        for session in self.sessions:  # the clock is read only for a link that is not up: rare
            link = session.link
            if link.status == DOWN:
                timeout = min(timeout, link.retry_at - time.monotonic())
            elif link.status == CONNECTING:
                timeout = min(timeout, link.connect_deadline - time.monotonic())
        if self.stopping:
            timeout = min(timeout, 0.05)
        return max(0, int(timeout * 1000))

    def _on_idle_tick(self) -> None:
        if self.job_records is not None:
            self.job_records.flush()
        if os.getppid() != self.master_pid:
            log.warning("master %d is gone; stopping", self.master_pid)
            self._stop()
        self._apply_runtime_data()
        self._show_idle()
        now = time.monotonic()
        for session in self.sessions:
            if session.link.connect_overdue(now):
                self._lost(session, "connect timed out")

    def _apply_offers(self) -> None:
        """Tell every gearmand we are connected to what we now withhold and
        offer again (a connection made later says it in its hello)."""
        gone, back = self.offers.refresh()
        if not (gone or back):
            return
        self.hello = self.offers.can_do() + self.client_id
        change = self.offers.changes(gone, back)
        for tasks, verb in ((gone, "withholding"), (back, "offering again")):
            if tasks:  # debug: a task with a rate changes at its rate (the master logs pauses)
                log.debug("%s task(s) %s", verb, ", ".join(sorted(tasks)))
        for session in self.sessions:
            if session.link.status == UP and self._send(session, change) and back:
                grab = session.offered_again(self.accepting)
                if grab:
                    self._send(session, grab)
                self._settle_low_water(session)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # --- connections ----------------------------------------------------

    def _connect_due(self) -> None:
        for session in self.sessions:
            link = session.link
            if link.status == DOWN and time.monotonic() >= link.retry_at:
                try:
                    sock = link.start_connect()
                except (OSError, ConnectionLost) as err:
                    self._lost(session, str(err))
                    continue
                self.by_fd[sock.fileno()] = session
                self.poller.register(sock, select.POLLOUT)

    def _on_connected(self, session: Session) -> None:
        link = session.link
        try:
            link.finish_connect()
        except ConnectionLost as err:
            self._lost(session, str(err))
            return
        self.poller.modify(link.sock, select.POLLIN)  # type: ignore[arg-type]  # connected: sock is set
        self._send(session, session.opening(self.hello))

    def _lost(self, session: Session, reason: str) -> None:
        """Drop a connection and schedule a reconnect with back-off."""
        self._drop(session)
        session.link.schedule_retry(reason)

    def _drop(self, session: Session) -> None:
        link = session.link
        fd = link.sock.fileno() if link.sock is not None else -1
        if fd >= 0:
            self.by_fd.pop(fd, None)
            with contextlib.suppress(KeyError):
                self.poller.unregister(fd)
        was_registered = session.registered
        link.close()
        session.reset()
        if was_registered:
            self.slot.registered_with &= ~(1 << link.index)
            self._registration_changed()

    def _send(self, session: Session, data: bytes) -> bool:
        try:
            session.link.send(data)
            return True
        except ConnectionLost as err:
            self._lost(session, str(err))
            return False

    def _registration_changed(self) -> None:
        self._show_idle()
        self._tell_master()

    def _show_idle(self) -> None:
        """Waiting for work: registered somewhere (idle), or not yet (starting).
        Not while a job is held: the slot names it until it is answered."""
        if self.holding_job:
            return
        state = ChildState.IDLE if self.slot.registered_with else ChildState.STARTING
        self.slot.publish(state)
        self.idle_title_due = False
        if not self.stopping:
            self.title.show("idle" if state == ChildState.IDLE else "starting")

    def _tell_master(self) -> None:
        try:
            os.write(self.events_fd, b"r")
        except OSError:
            pass  # the master polls the scoreboard anyway

    # --- packets ----------------------------------------------------------

    def _on_readable(self, session: Session, peeked: bool = False) -> None:
        """PEEKED: the caller has already looked, and found no wake-up."""
        link = session.link
        try:
            # Dozing after a job's answer, the read is almost always gearmand's
            # wake-up: answered before it is read (see GearmandConnection.peek_woken).
            if session.dozing and not session.grabbed_on_noop and not peeked \
                    and link.peek_woken(self._buffer, self._view):
                self._on_woken_unread(session)
                return
            packets = link.receive(self._buffer, self._view)
        except ConnectionLost as err:
            self._lost(session, str(err))
            return
        if packets is WOKEN:  # NO_JOB and NOOP, the wake-up of a child that sleeps between jobs
            self._on_woken(session)
        elif packets is NOTHING_READ:  # the socket's receive timeout passed
            self._on_read_timeout(session)
            return
        else:
            for kind, body in packets:
                if kind == JOB_ASSIGN_UNIQ:
                    if not session.registered:
                        self._confirm_registration(session)
                    self._run_job(session, body)
                else:
                    self._on_other_packet(session, kind, body)
                if link.status != UP:
                    return
        # The mark moves only around a PRE_SLEEP: a child fed jobs back to back
        # (neither dozing nor asleep) skips the call on every job's path. A
        # sleeping child makes it here, not in _settle_low_water: a call less.
        if session.dozing or session.sleep_sent:
            try:
                session.settle_low_water(self.stopping)
            except ConnectionLost as err:
                self._lost(session, str(err))

    def _on_read_timeout(self, session: Session) -> None:
        """A blocking read found nothing: dozing, DOZING_TIMEOUT passed
        without a job; awake, gearmand owed us an answer for connect_timeout."""
        if session.dozing:
            self._on_idle_tick()
        else:
            self._lost(session, f"gearmand sent nothing for {self.config.connect_timeout:g} s "
                                "while it owed an answer")

    def _wait_dozing(self, session: Session) -> None:
        """Just after a job, with one gearmand: wait for the next in the
        socket's blocking read instead of poll, a system call and some
        microseconds less per wait (bench/README.md). Until DOZING_TIMEOUT:
        the child then says "idle" and polls as usual.

        Waiting for the wake-up, the read is a peek, which takes nothing,
        so a signal may break it at any point (_break_wait). Once the GRAB
        answering it is out, gearmand's answer comes at once, and the read
        itself waits: breaking it could lose what it read, so a signal is
        acted on when it ends. (A signal that comes just before the peek
        begins is acted on when it ends too: DOZING_TIMEOUT at most.)"""
        if session.grabbed_on_noop:
            self._on_readable(session)
            return
        try:
            # The flag is cleared before either handler below runs: a signal
            # inside the ConnectionLost handler must not raise past it.
            try:
                self.waiting_in_socket = True
                woken = session.link.peek_woken(self._buffer, self._view)
            finally:
                self.waiting_in_socket = False
        except WaitBroken:
            return  # the loop acts on the signal; the bytes wait (a lost link is found on the next read)
        except ConnectionLost as err:
            self._lost(session, str(err))
            return
        if woken:
            self._on_woken_unread(session)
        elif woken is None:
            self._on_idle_tick()
        else:
            self._on_readable(session, peeked=True)  # a job that answered the GRAB sent with the last answer

    def _on_other_packet(self, session: Session, kind: int, body: bytes) -> None:
        """Any packet but a job (a kind the worker side never gets is ignored)."""
        if kind == NO_JOB:
            self._on_no_job(session)
        elif kind == NOOP:
            grab = session.noop(self.accepting)
            if grab:
                self._send(session, grab)
        elif kind == p.ERROR:
            self._on_error(session.link, body)

    def _on_no_job(self, session: Session) -> None:
        # PRE_SLEEP first: whatever we do before it delays the next job.
        sleep = session.no_job()
        if (not sleep or self._send(session, sleep)) and not session.registered:
            self._confirm_registration(session)

    def _on_woken(self, session: Session) -> None:
        """NO_JOB and NOOP in one read: _on_no_job and the NOOP's GRAB, in one send."""
        grab = session.woken(self.accepting)
        if (not grab or self._send(session, grab)) and not session.registered:
            self._confirm_registration(session)

    def _on_woken_unread(self, session: Session) -> None:
        """The wake-up, still in the socket: answered, then read."""
        self._on_woken(session)
        link = session.link
        if link.status == UP:  # else the answer found the connection lost, and the wake-up went with it
            link.skip_woken(self._buffer)
            session.settle_low_water(self.stopping)

    @staticmethod
    def _on_error(link: GearmandConnection, body: bytes) -> None:
        code, _, text = body.partition(b"\0")
        log.error("gearmand %s reports %s: %s", link.server, code.decode(errors="replace"),
                  text.decode(errors="replace"))

    def _settle_low_water(self, session: Session) -> None:
        try:
            session.settle_low_water(self.stopping)
        except ConnectionLost as err:
            self._lost(session, str(err))

    def _confirm_registration(self, session: Session) -> None:
        """The first answer to a GRAB on this session (callers check
        session.registered: this is on every job's path)."""
        session.confirm_registration()
        self.slot.registered_with |= 1 << session.link.index
        self.slot.registered_once = True
        self._registration_changed()

    def _apply_runtime_data(self) -> None:
        version = self.header[DATA_VERSION]
        if version != self.data_version:
            try:
                runtime.replace(runtime.load_file(self.config.runtime_file))
                self.data_version = version
            except (OSError, ValueError) as err:
                log.error("cannot load runtime data: %s", err)

    # --- one job ------------------------------------------------------------
    # Every line here runs for every job: the protections cost a comparison
    # each while nothing happened (see bench/README.md, "What each protection costs").

    def _run_job(self, session: Session, body: bytes) -> None:
        link = session.link
        self.holding_job = True
        handle, task, unique, data = body.split(b"\0", 3)
        self.job_handle = handle
        if self.header[DATA_VERSION] != self.data_version:
            self._apply_runtime_data()
        route = self.routes[task]
        if route.metered:  # a task with a rate: this job spends the child's permit
            self.offers.spend(route.name)
        started = time.monotonic()
        job, reply, outcome, fatal = self._answer(session, route, handle, unique, data, started)
        life = route.life
        finished = time.monotonic()
        if self.recycling_limits:
            self._check_recycling()
        if route.metered:
            reply += self.offers.withdraw(route.name)
        reply += session.after_job(fatal is None and self.accepting)
        if link.status == UP:
            try:  # _send's body, one call fewer on every job's path
                link.send(reply)
            except ConnectionLost as err:
                self._lost(session, str(err))
        else:
            log.warning("job %s finished but gearmand %s is gone; gearmand will hand it out again",
                        handle.decode(errors="replace"), link.server)
        self.holding_job = False
        if life is not None:
            life.after_answer()
        # The client has its answer: what is left waits no longer for us.
        # Counted before the slot says idle, so that idle means counted.
        if self.counter is not None:
            self.counter.count(task, outcome, finished - started)
        self.slot.between_jobs(IDLE, finished)
        self.idle_title_due = True
        if self.after_job_hook is not None and job is not None:
            self.hooks.call("after_job", self, job, OUTCOMES[outcome])
        if fatal is not None:
            raise fatal

    def _answer(self, session: Session, route: Route, handle: bytes, unique: bytes, data: bytes,
                started: float) -> tuple[Job | None, bytes, int, BaseException | None]:
        """(the job, None for a run that ended before; reply; outcome; exception to re-raise)."""
        life = route.life
        if life is None and self.late_life is not None and unique[:3] == b"gw:":  # a run the leader submitted
            life = route.life = self.late_life(route.name)
        if life is not None:
            if not life.begin(unique, data):
                return None, p.work_complete(handle, b""), DONE, None  # this run ended before: its first answer counts
            unique = life.unique
        job = Job(handle, route.name, unique, data, session)
        if self.before_job_hook is not None:
            self.hooks.call("before_job", self, job)
        if self.poison.clear(handle):
            return job, *self._execute(session.link, job, route, handle, unique, started)
        return job, *self._check_poison(session.link, job, route, handle, unique, started)

    def _check_poison(self, link: GearmandConnection, job: Job, route: Route, handle: bytes, unique: bytes,
                      started: float) -> tuple[bytes, int, BaseException | None]:
        """A job that some child died holding: refused, or run once more."""
        kills, why = self.poison.kills(link.index, handle)
        if kills and why == KILLED_FOR_TIME:
            return self._refuse_timed_out(job, route), TIMEOUT, None
        if kills and why == KILLED_FOR_CANCEL:  # gearmand did not drop it (see master._kill_cancelled)
            err = JobCancelled(cancel_message(job.handle))
            return self._fail_reply(job, route, f"JobCancelled: {err}", err), CANCELLED, None
        if kills and kills >= self.limits.poison_kills > 0:
            return self._refuse_poison(job, route, kills, why), POISON, None
        return self._execute(link, job, route, handle, unique, started)

    def _execute(self, link: GearmandConnection, job: Job, route: Route, handle: bytes, unique: bytes,
                 started: float) -> tuple[bytes, int, BaseException | None]:
        """Run the task under its time limit: (reply, outcome, exception to re-raise).
        HANDLE and UNIQUE are the job's as bytes (job.handle and job.unique decode them)."""
        limit = route.limit
        self.slot.busy(started, started + limit if limit else 0.0, link.index, route.field, unique, handle)
        self.title.show(route.title)
        timer = self.timer
        try:
            try:
                self.in_task = True
                if limit:
                    timer.arm(route.name, limit, started)
                result = route.call(self, job)
            finally:
                # in_task first: a cancel that came during job_over would
                # raise past the line clearing it, and a stale in_task lets
                # the next job's cancel raise before its task runs.
                self.in_task = False
                timer.job_over()
            if limit and timer.expired:
                timer.check()  # the task caught JobTimeout and returned anyway
            if type(result) is not bytes:
                result = encode_result(result)
            if route.life is not None:
                route.life.succeeded(result)
            self.slot.jobs_done += 1
            return p.work_complete(handle, result), DONE, None
        except BaseException as err:
            if self.forked_by_task:  # a process the task forked leaves the task (sys.exit in a fork): it ends
                os._exit(_exit_status(err))
            return self._failed(job, route, err)
        finally:
            if self.forked_by_task:  # a process the task forked, returning from the task: it is no worker
                os._exit(EXIT_OK)

    def _failed(self, job: Job, route: Route, err: BaseException) -> tuple[bytes, int, BaseException | None]:
        """(reply, outcome, exception to re-raise) for a task that raised."""
        self.hooks.call("on_failure", self, job, err)
        if isinstance(err, JobTimeout):  # the traceback shows where the task was when time ran out
            return self._failure(job, route, err), TIMEOUT, None
        if isinstance(err, JobCancelled):
            return self._failure(job, route, err), CANCELLED, None
        if isinstance(err, Exception):
            return self._failure(job, route, err), FAILED, None
        return self._failure(job, route, err), FAILED, err  # SystemExit, KeyboardInterrupt: answer, then leave

    def _refuse_timed_out(self, job: Job, route: Route) -> bytes:
        """A job whose run was killed for its time limit: its side effects
        may have happened; running it again could double them."""
        message = (f"task {job.task} exceeded its time limit of {route.limit:g} s and its child was "
                   f"killed after kill_grace {self.limits.kill_grace:g} s; job {job.handle} is not run again")
        return self._fail_reply(job, route, f"JobTimeout: {message}")

    def _refuse_poison(self, job: Job, route: Route, kills: int, why: str) -> bytes:
        message = (f"job {job.handle} not run again: its runs killed {kills} children (last: {why}); "
                   f"poison_kills = {self.limits.poison_kills}")
        return self._fail_reply(job, route, f"PoisonJob: {message}")

    def _failure(self, job: Job, route: Route, err: BaseException) -> bytes:
        return self._fail_reply(job, route, f"{type(err).__name__}: {err}", err)

    def _fail_reply(self, job: Job, route: Route, message: str, err: BaseException | None = None) -> bytes:
        # The error travels as WORK_WARNING, then WORK_FAIL ends the job.
        # Not WORK_EXCEPTION: gearmand 1.1 ends the job on it but forwards
        # it only to clients that asked for exceptions; the others hang.
        # A task with retries says in the same line what comes next (jobs/runs.py).
        self.slot.jobs_failed += 1
        if route.life is not None:
            message += route.life.failed(err, message)
        log.error("task %s failed on job %s: %s", job.task, job.handle, message, exc_info=err)
        handle = job.handle.encode()
        return p.request(p.WORK_WARNING, handle, message.encode("utf-8", "replace")) + p.request(
            p.WORK_FAIL, handle)

    def _check_recycling(self) -> None:
        """After a job: due for replacement? Then stop taking jobs and tell
        the master, which lets this child go once its successor registered."""
        slot, limits = self.slot, self.limits
        if slot.recycle != Recycle.NO:
            return
        if limits.max_jobs and slot.jobs_done + slot.jobs_failed >= limits.max_jobs:
            slot.recycle = Recycle.MAX_JOBS
        elif limits.max_memory and (resident_bytes() or 0) > limits.max_memory:
            slot.recycle = Recycle.MAX_MEMORY
        else:
            return
        self.accepting = False
        slot.publish_setup()  # before the nudge: the master reads the slot when it wakes
        self._tell_master()

    # --- what tasks may call (python-gearman's worker API) --------------

    def send_job_status(self, job: Job, numerator: int, denominator: int) -> None:
        self._update(job, p.WORK_STATUS, str(numerator).encode(), str(denominator).encode())
        route = self.routes.get(job.task.encode())
        if route is not None and route.life is not None:
            route.life.report_progress(numerator, denominator)

    def send_job_data(self, job: Job, data: bytes | str) -> None:
        self._update(job, p.WORK_DATA, encode_result(data))

    def send_job_warning(self, job: Job, data: bytes | str) -> None:
        self._update(job, p.WORK_WARNING, encode_result(data))

    def _update(self, job: Job, kind: int, *args: bytes) -> None:
        session = job.connection
        if isinstance(session, Session) and session.link.status == UP:
            self._send(session, p.request(kind, job.handle.encode(), *args))


def _exit_status(err: BaseException) -> int:
    """The status a process asked for with sys.exit(), else a failure."""
    if isinstance(err, SystemExit):
        code = err.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_ERROR)
    return EXIT_ERROR


def run_child(worker: Worker) -> int:
    try:
        return worker.run()
    except DescriptorsClosed as err:
        log.error("child cannot go on: %s", err)
        return EXIT_ERROR
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        return EXIT_ERROR
