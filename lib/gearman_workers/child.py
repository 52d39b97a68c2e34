"""A child process: one complete Gearman worker, connected to every server.

The loop asks for the next job in the same write that returns the last
result, and sends PRE_SLEEP only when gearmand says there is none; so a busy
child costs gearmand one round trip per job. A stop (SIGTERM, the master's
death) wakes the loop at once through the signal wake-up fd; a job already
taken is always finished and answered first.
"""

from __future__ import annotations

import contextlib

# getaddrinfo() imports the idna codec on first use; import it before any
# fork so a child never takes an import lock another thread might hold.
import encodings.idna  # noqa: F401
import errno
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import protocol as p
from . import runtime
from .config import Config, Server
from .job import Job, encode_result
from .scoreboard import Scoreboard, SlotWriter, State

log = logging.getLogger("gearman_workers.child")

GRAB = p.request(p.GRAB_JOB_UNIQ)
PRE_SLEEP = p.request(p.PRE_SLEEP)
MAX_RECONNECT_DELAY = 5.0
RECV_BUFFER = 256 * 1024
EXIT_OK = 0
EXIT_ERROR = 1

DOWN, CONNECTING, UP = 0, 1, 2


class Link:
    """This child's connection to one gearmand."""

    __slots__ = (
        "awaiting_grab",
        "connect_deadline",
        "delay",
        "down_since",
        "reader",
        "registered",
        "retry_at",
        "server",
        "sock",
        "status",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sock: socket.socket | None = None
        self.reader = p.PacketReader()
        self.status = DOWN
        self.retry_at = 0.0
        self.delay = 0.0
        self.down_since: float | None = None
        self.awaiting_grab = False
        self.registered = False
        self.connect_deadline = 0.0


class Worker:
    """The work loop of one child. ``run()`` returns the exit status."""

    def __init__(self, config: Config, tasks: dict[str, Callable[..., Any]],
                 board: Scoreboard, slot: SlotWriter, master_pid: int, events_fd: int) -> None:
        self.config = config
        self.tasks = {name.encode(): func for name, func in tasks.items()}
        self.board = board
        self.slot = slot
        self.master_pid = master_pid
        self.events_fd = events_fd
        self.links = [Link(server) for server in config.servers]
        self.by_fd: dict[int, Link] = {}
        self.stopping = False
        self.data_version = board.data_version
        self.hello = b"".join(p.request(p.CAN_DO, name) for name in self.tasks) + p.request(
            p.SET_CLIENT_ID, f"{config.hostname}:{config.name}:{os.getpid()}".encode())
        # One receive buffer for the child's life: recv() of a fresh large
        # buffer costs an mmap/mremap/munmap per job.
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self.poller = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- set-up and teardown ------------------------------------------

    def _install_signals(self) -> None:
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.poller.register(self._wake_r, select.POLLIN)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        self._install_signals()
        self.slot.publish(State.STARTING)
        try:
            self._loop()
        finally:
            self.slot.publish(State.STOPPING)
            for link in self.links:
                self._close(link)
        return EXIT_OK

    # --- the loop ---------------------------------------------------------

    def _loop(self) -> None:
        poll = self.poller.poll
        by_fd = self.by_fd
        stop_deadline = None
        single = self.links[0] if len(self.links) == 1 else None
        while True:
            if self.stopping:
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + self.config.connect_timeout
                    self.slot.publish(State.STOPPING)
                if not any(link.awaiting_grab for link in self.links) or time.monotonic() > stop_deadline:
                    return
            else:
                self._connect_due()
                if single is not None and single.awaiting_grab and single.status == UP:
                    # gearmand answers a GRAB at once: skip the poll and wait
                    # in recv (bounded by SO_RCVTIMEO); a signal still stops us
                    # right after the answer.
                    self._on_readable(single)
                    continue
            events = poll(self._poll_timeout_ms())
            if not events:
                self._on_idle_tick()
                continue
            for fd, mask in events:
                link = by_fd.get(fd)
                if link is None:
                    self._drain_wakeups()
                elif link.status == UP:
                    self._on_readable(link)
                else:
                    self._on_connected(link, mask)

    def _poll_timeout_ms(self) -> int:
        timeout = self.config.poll_timeout
        now = time.monotonic()
        for link in self.links:
            if link.status == DOWN:
                timeout = min(timeout, link.retry_at - now)
            elif link.status == CONNECTING:
                timeout = min(timeout, link.connect_deadline - now)
        if self.stopping:
            timeout = min(timeout, 0.05)
        return max(0, int(timeout * 1000))

    def _on_idle_tick(self) -> None:
        if os.getppid() != self.master_pid:
            log.warning("master %d is gone; stopping", self.master_pid)
            self.stopping = True
        self._apply_runtime_data()
        self.slot.publish(State.IDLE if self._any_registered() else State.STARTING)
        now = time.monotonic()
        for link in self.links:
            if link.status == CONNECTING and now > link.connect_deadline:
                self._lost(link, "connect timed out")

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # --- connections ----------------------------------------------------

    def _connect_due(self) -> None:
        now = time.monotonic()
        for link in self.links:
            if link.status == DOWN and now >= link.retry_at:
                self._start_connect(link)

    def _start_connect(self, link: Link) -> None:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                link.server.host, link.server.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        except OSError as err:
            self._lost(link, str(err))
            return
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._lost(link, os.strerror(code))
            return
        link.sock, link.status = sock, CONNECTING
        link.connect_deadline = time.monotonic() + self.config.connect_timeout
        self.by_fd[sock.fileno()] = link
        self.poller.register(sock, select.POLLOUT)

    def _on_connected(self, link: Link, mask: int) -> None:
        assert link.sock is not None
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._lost(link, os.strerror(code))
            return
        sock = link.sock
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking sends and receives, but never forever: a gearmand that
        # stays silent for connect_timeout while it owes us an answer is gone.
        seconds = int(self.config.connect_timeout)
        micros = int((self.config.connect_timeout - seconds) * 1e6)
        timeout = struct.pack("ll", seconds, micros)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        self.poller.modify(sock, select.POLLIN)
        link.status = UP
        link.reader = p.PacketReader()
        if link.down_since is not None:
            log.info("reconnected to gearmand %s after %.1f s", link.server, time.monotonic() - link.down_since)
        link.down_since, link.delay = None, 0.0
        self._send(link, self.hello + GRAB)
        link.awaiting_grab = True

    def _lost(self, link: Link, reason: str) -> None:
        """Drop a connection and schedule a reconnect with backoff."""
        was_registered = link.registered
        self._close(link)
        now = time.monotonic()
        if link.down_since is None:
            link.down_since = now
            log.warning("gearmand %s unreachable (%s); reconnecting in the background", link.server, reason)
        link.delay = min(MAX_RECONNECT_DELAY, max(0.1, link.delay * 2))
        link.retry_at = now + link.delay
        if was_registered:
            self._registration_changed()

    def _close(self, link: Link) -> None:
        if link.sock is not None:
            self.by_fd.pop(link.sock.fileno(), None)
            with contextlib.suppress(KeyError):
                self.poller.unregister(link.sock)
            link.sock.close()
        link.sock, link.status = None, DOWN
        link.awaiting_grab = False
        if link.registered:
            link.registered = False
            self.slot.links_up -= 1

    def _send(self, link: Link, data: bytes) -> bool:
        try:
            link.sock.sendall(data)  # type: ignore[union-attr]
            return True
        except OSError as err:
            self._lost(link, f"send failed: {err.strerror or err}")
            return False

    def _any_registered(self) -> bool:
        return self.slot.links_up > 0

    def _registration_changed(self) -> None:
        self.slot.publish(State.IDLE if self._any_registered() else State.STARTING)
        try:
            os.write(self.events_fd, b"r")
        except OSError:
            pass  # the master polls the scoreboard anyway

    # --- packets ----------------------------------------------------------

    def _on_readable(self, link: Link) -> None:
        try:
            size = link.sock.recv_into(self._buffer)  # type: ignore[union-attr]
        except OSError as err:
            self._lost(link, err.strerror or str(err))
            return
        if not size:
            self._lost(link, "connection closed by gearmand")
            return
        try:
            packets = link.reader.feed(self._view[:size].tobytes())
        except p.ProtocolError as err:
            self._lost(link, str(err))
            return
        for kind, body in packets:
            if kind == p.JOB_ASSIGN_UNIQ:
                self._confirm_registration(link)
                self._run_job(link, body)
            elif kind == p.NO_JOB:
                self._confirm_registration(link)
                link.awaiting_grab = False
                self._send(link, PRE_SLEEP)
            elif kind == p.NOOP:
                if not self.stopping and not link.awaiting_grab:
                    link.awaiting_grab = self._send(link, GRAB)
            elif kind == p.ERROR:
                code, _, text = body.partition(b"\0")
                log.error("gearmand %s reports %s: %s", link.server, code.decode(errors="replace"),
                          text.decode(errors="replace"))
            if link.status != UP:
                return

    def _confirm_registration(self, link: Link) -> None:
        # gearmand answers in order: an answer to our GRAB means every
        # CAN_DO sent before it has been processed.
        if not link.registered:
            link.registered = True
            self.slot.links_up += 1
            self._registration_changed()

    def _apply_runtime_data(self) -> None:
        version = self.board.data_version
        if version != self.data_version:
            try:
                runtime.replace(runtime.load_file(self.config.runtime_file))
                self.data_version = version
            except (OSError, ValueError) as err:
                log.error("cannot load runtime data: %s", err)

    def _run_job(self, link: Link, body: bytes) -> None:
        link.awaiting_grab = False
        handle, task, unique, data = body.split(b"\0", 3)
        if self.board.data_version != self.data_version:
            self._apply_runtime_data()
        slot = self.slot
        slot.publish(State.BUSY, time.time(), handle)
        job = Job(handle.decode(), task.decode(), unique.decode("utf-8", "replace"), data, link)
        fatal: BaseException | None = None
        try:
            reply = p.request(p.WORK_COMPLETE, handle, encode_result(self.tasks[task](self, job)))
            slot.jobs_done += 1
        except Exception as err:
            reply = self._failure(job, err)
        except BaseException as err:  # SystemExit, KeyboardInterrupt: answer, then leave
            reply, fatal = self._failure(job, err), err
        if not self.stopping and fatal is None:
            reply += GRAB
            link.awaiting_grab = True
        if link.status == UP:
            self._send(link, reply)
        else:
            log.warning("job %s finished but gearmand %s is gone; gearmand will hand it out again",
                        job.handle, link.server)
        slot.publish(State.IDLE)
        if fatal is not None:
            raise fatal

    def _failure(self, job: Job, err: BaseException) -> bytes:
        self.slot.jobs_failed += 1
        message = f"{type(err).__name__}: {err}"
        log.error("task %s failed on job %s: %s\n%s", job.task, job.handle, message,
                  "".join(traceback.format_exception(err)).rstrip())
        # The error travels as WORK_WARNING, then WORK_FAIL ends the job.
        # Not WORK_EXCEPTION: gearmand 1.1 ends the job on it but forwards
        # it only to clients that asked for exceptions; the others hang.
        handle = job.handle.encode()
        return p.request(p.WORK_WARNING, handle, message.encode("utf-8", "replace")) + p.request(
            p.WORK_FAIL, handle)

    # --- what tasks may call (python-gearman's worker API) --------------

    def send_job_status(self, job: Job, numerator: int, denominator: int) -> None:
        self._update(job, p.WORK_STATUS, str(numerator).encode(), str(denominator).encode())

    def send_job_data(self, job: Job, data: bytes | str) -> None:
        self._update(job, p.WORK_DATA, encode_result(data))

    def send_job_warning(self, job: Job, data: bytes | str) -> None:
        self._update(job, p.WORK_WARNING, encode_result(data))

    def _update(self, job: Job, kind: int, *args: bytes) -> None:
        link = job.connection
        if isinstance(link, Link) and link.status == UP:
            self._send(link, p.request(kind, job.handle.encode(), *args))


def run_child(worker: Worker) -> int:
    try:
        return worker.run()
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        return EXIT_ERROR
