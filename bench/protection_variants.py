"""Preload hooks that take one of the child's per-job protections away, so
that bench/protections can measure what each one costs. They patch the
pool's classes in the master before it forks: every child runs without
that protection. For measuring only; never for running jobs.

    bin/gearman-workers --python-path bench --preload protection_variants:without_poison_check ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gearman_workers.child import IDLE_TITLE_AFTER, Worker
from gearman_workers.poison import PoisonCheck
from gearman_workers.scoreboard import SlotWriter
from gearman_workers.titles import Title

if TYPE_CHECKING:
    from gearman_workers.session import Session


def without_poison_check() -> None:
    """Every job runs as if no child had ever died holding it."""
    PoisonCheck.clear = lambda self, handle: True  # type: ignore[method-assign]


def without_slot_writes() -> None:
    """The master is not told which job a child holds, nor its deadline,
    nor anything after a child's first job (its registration still is)."""
    between_jobs = SlotWriter.between_jobs

    def before_the_first_job_only(self: SlotWriter, state: int, now: float) -> None:
        if not (self.jobs_done or self.jobs_failed):
            between_jobs(self, state, now)  # type: ignore[arg-type]

    SlotWriter.busy = lambda self, *job: None  # type: ignore[method-assign]  # whatever the job's fields
    SlotWriter.between_jobs = before_the_first_job_only  # type: ignore[method-assign]


def without_title() -> None:
    """No process title is compared or set."""
    Title.show = lambda self, doing="": None  # type: ignore[method-assign]


def without_any() -> None:
    without_poison_check()
    without_slot_writes()
    without_title()


def floor_job_path() -> None:
    """Once a child sleeps between jobs, its reads are handled as the bare
    Python floor (python_floor_worker.py) handles them: the job's task run
    and answered with nothing around it, the wake-up answered at once. What
    is left of the pool is the child process and its loop: bench/hops
    --variant floor_job_path tells what the job path costs from what the
    rest does."""
    from gearman_workers import protocol as p
    from gearman_workers.job import Job

    general = Worker._on_readable

    def like_the_floor(self: Worker, session: Session) -> None:
        if not (session.registered and session.dozing):  # registering, or stopping: the pool's own way
            general(self, session)
            return
        sock, view = session.link.sock, self._view
        assert sock is not None  # registered: connected
        size = sock.recv_into(self._buffer)
        _, kind, length = p.HEADER.unpack_from(view, 0)
        if kind == p.JOB_ASSIGN_UNIQ and p.HEADER_SIZE + length == size:
            handle, task, unique, data = bytes(view[p.HEADER_SIZE:size]).split(b"\0", 3)
            route = self.routes[task]
            result = route.call(self, Job(handle, route.name, unique, data, session))
            sock.sendall(p.work_complete(handle, result) + session.after_job(True))
        elif view[:size] == p.NO_JOB_THEN_NOOP:
            sock.sendall(session.woken(True))
        else:
            raise RuntimeError(f"floor_job_path: a read it was not made for: {bytes(view[:size])!r}")

    Worker._on_readable = like_the_floor  # type: ignore[method-assign]
    Worker._wait_dozing = _poll_then_read  # type: ignore[method-assign]  # the floor's reads: nothing peeked


def floor_streaming() -> None:
    """A child fed jobs back to back handles each read that is one whole
    job as the bare Python floor does: the task run and answered with the
    next GRAB, nothing around it (no poison check, slot, timer, title or
    count, and no calls in between). Any other read goes the pool's way.
    bench/protections: against the floor, what the pool's process costs a
    streaming job; against "all on", what its job path costs."""
    from gearman_workers import protocol as p
    from gearman_workers.job import Job

    general = Worker._on_readable

    def like_the_floor(self: Worker, session: Session, peeked: bool = False) -> None:
        link = session.link
        if not session.registered or session.dozing or session.sleep_sent or link.reader.pending:
            general(self, session, peeked)
            return
        view, sock = self._view, link.sock
        assert sock is not None  # registered: connected
        size = sock.recv_into(self._buffer)
        if not size:
            self._lost(session, "connection closed by gearmand")
            return
        _, kind, length = p.HEADER.unpack_from(view, 0) if size >= p.HEADER_SIZE else (b"", 0, 0)
        if kind != p.JOB_ASSIGN_UNIQ or p.HEADER_SIZE + length != size:  # not one whole job: the pool's way
            _the_pools_way(self, session, view, size)
            return
        handle, task, unique, data = bytes(view[p.HEADER_SIZE:size]).split(b"\0", 3)
        route = self.routes[task]
        result = route.call(self, Job(handle, route.name, unique, data, session))
        sock.sendall(p.work_complete(handle, result) + session.after_job(True))

    Worker._on_readable = like_the_floor  # type: ignore[method-assign]


def inlined_job_path() -> None:  # noqa: C901 (one function is what it measures)
    """Every protection kept, and a streaming child's whole job written out
    as one function, the protections' own bodies included: the read, the
    poison check, the slot, title and timer, the task, the answer, the
    counts. A design not taken (it reaches into the private state of six
    modules); measured to know what all the calls and layers cost together.
    Any read that is not one whole job of a task without a record, any
    job a child may have died holding, goes the pool's way."""
    import _signal  # type: ignore[import-not-found]
    import signal
    import time

    from gearman_workers import protocol as p
    from gearman_workers import scoreboard as sb
    from gearman_workers.job import Job, encode_result
    from gearman_workers.jobstats import _FIRST_BUCKET, DONE, FASTEST

    general, monotonic, getsignal, alarm = Worker._on_readable, time.monotonic, _signal.getsignal, signal.SIGALRM
    unpack, header_size = p.HEADER.unpack_from, p.HEADER_SIZE

    def inlined(self: Worker, session: Session, peeked: bool = False) -> None:  # noqa: C901 (as above)
        link = session.link
        if session.dozing or session.sleep_sent or session.grabbed_on_noop or link.reader.pending \
                or not session.registered or self.before_job_hook or self.after_job_hook or self.recycling_limits:
            general(self, session, peeked)
            return
        view = self._view
        size = link.sock.recv_into(self._buffer)  # type: ignore[union-attr]  # registered: connected
        magic, kind, length = unpack(view, 0) if size >= header_size else (b"", 0, 0)
        if kind != p.JOB_ASSIGN_UNIQ or header_size + length != size or magic != p.RES:
            if not size:
                self._lost(session, "connection closed by gearmand")
                return
            _the_pools_way(self, session, view, size)
            return
        body = bytes(view[header_size:size])
        handle, task, unique, data = body.split(b"\0", 3)
        route, words, board, poison = self.routes[task], self.header, self.board, self.poison
        start = board._handles_at
        if words[sb.DATA_VERSION] != self.data_version or route.metered or route.life is not None \
                or self.late_life is not None or words[sb.POISON_VERSION] != poison._version \
                or (poison._handles and handle in poison._handles) \
                or board._mem.find(handle[:sb.HANDLE_FIELD], start,
                                   start + words[sb.SLOTS_IN_USE] * sb.HANDLE_FIELD) >= 0:
            self._run_job(session, body)
            return
        self.holding_job, self.job_handle = True, handle
        started, limit, slot, timer, title = monotonic(), route.limit, self.slot, self.timer, self.title
        mem = slot._mem
        mem[slot._handle] = sb._HANDLE.pack(handle)
        mem[slot._job] = sb._JOB.pack(sb.BUSY, link.index, started, started + limit if limit else 0.0, started,
                                      slot.jobs_done, slot.jobs_failed, route.field, unique)
        if title._doing != route.title:
            title.show(route.title)
        job = Job(handle, route.name, unique, data, session)
        try:
            try:
                self.in_task = True
                if limit:
                    timer.expired, timer._task, timer._limit = False, route.name, limit
                    deadline = timer.deadline = started + limit
                    if not started < timer._alarm_at <= deadline:
                        timer.arm(route.name, limit, started)
                result = route.call(self, job)
            finally:
                self.in_task, timer.deadline = False, 0.0
                if getsignal(alarm) is not timer._handler:
                    timer.job_over()
            if limit and timer.expired:
                timer.check()
            if type(result) is not bytes:
                result = encode_result(result)
            slot.jobs_done += 1
            reply, outcome, fatal = p.work_complete(handle, result), DONE, None
        except BaseException as err:
            reply, outcome, fatal = self._failed(job, route, err)
        finished = monotonic()
        self._send(session, reply + session.after_job(fatal is None and self.accepting))
        self.holding_job = False
        counter, seconds = self.counter, finished - started
        if counter is not None and seconds <= FASTEST:
            counts_at, seconds_at = counter._rows[task]
            counts = counter._counts
            counts[counts_at + outcome] += 1
            counts[counts_at + _FIRST_BUCKET] += 1
            counter._seconds[seconds_at] += seconds
        elif counter is not None:  # a slower job: its bucket is searched for
            counter.count(task, outcome, seconds)
        mem[slot._between] = sb._BETWEEN.pack(sb.IDLE, 0, 0.0, 0.0, finished, slot.jobs_done, slot.jobs_failed)
        self.idle_title_due = True
        if fatal is not None:
            raise fatal

    Worker._on_readable = inlined  # type: ignore[method-assign]


def floor_in_child() -> None:
    """Each child runs the bare Python floor's own loop
    (python_floor_worker.py) on a connection of its own, in place of the
    pool's: the floor's code in a pool child's process (forked from the
    master, with its memory and title; the loop's signal handlers are not
    installed). Against the floor, it tells what the process costs from
    what the code does."""
    import runpy
    import sys
    from pathlib import Path

    def run_the_floor(self: Worker) -> int:
        server, task = self.config.servers[0], next(iter(self.routes)).decode()
        sys.argv = ["python_floor_worker.py", f"{server.host}:{server.port}", task]
        runpy.run_path(str(Path(__file__).with_name("python_floor_worker.py")))["main"]()
        return 0

    Worker.run = run_the_floor  # type: ignore[method-assign]


def read_first() -> None:
    """The wake-up (NO_JOB and NOOP) read before it is answered, as the
    pool did before stop 37: the read empties the socket, and Linux sends
    a bare ACK for the two segments from inside it, ahead of the GRAB
    (bench/hops --variant read_first shows the ACK and its microseconds)."""
    from gearman_workers.connection import GearmandConnection

    GearmandConnection.peek_woken = lambda self, buffer, view: False  # type: ignore[method-assign]


def wait_in_poll() -> None:
    """A dozing child waits for its next job in poll, then reads, as the
    pool did before stop 38: a system call more per wait, two per job fed
    one at a time (bench/hops --variant wait_in_poll)."""
    Worker._wait_dozing = _poll_then_read  # type: ignore[method-assign]


def _the_pools_way(worker: Worker, session: Session, view: memoryview, size: int) -> None:
    """A read that is not one whole job (the wake-up, a job in pieces, two
    jobs at once), handled as the pool handles it."""
    from gearman_workers import protocol as p

    for kind, body in session.link.reader.feed_received(view, size):
        if kind == p.JOB_ASSIGN_UNIQ:
            worker._run_job(session, body)
        else:
            worker._on_other_packet(session, kind, body)


def _poll_then_read(self: Worker, session: Session) -> None:
    """Worker._wait_dozing as poll, then the read it reports."""
    events = self.poller.poll(int(IDLE_TITLE_AFTER * 1000))
    if not events:
        self._on_idle_tick()
    for fd, _mask in events:
        if fd == session.link.sock.fileno():  # type: ignore[union-attr]  # up: sock is set
            self._on_readable(session)
        else:
            self._drain_wakeups()
