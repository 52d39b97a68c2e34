"""Handing the pool to a new master without a gap: both halves side by side.

New code goes live without emptying the host. The running master (the
predecessor), asked by SIGUSR2 or `gearman-workers --upgrade`, starts a
fresh copy of itself: the same command line, exec'd anew, so the new code,
preload and configuration are what it loads. The successor inherits two
descriptors: the PID-file lock (an flock belongs to the open file, which
both now share, so the lock is never free in between) and the write end of
a pipe. Once its own children are registered it writes "ready" there. The
predecessor then makes it the main process for systemd (MAINPID=), writes
its PID into the PID file and leaves, draining its children as on any
graceful stop. Until then both generations are registered with gearmand,
so the host never has fewer than N workers.

A successor that exits, or is not ready within upgrade_timeout, is stopped
and the predecessor carries on with the code it has: a broken deploy does
not take the host down. Each attempt ends with an outcome file that
`gearman-workers --upgrade` (systemd's ExecReload) waits for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import cleanup, files, identities, parts
from . import pidfile as pidfiles
from .notify import Notifier
from .prctl import PR_SET_CHILD_SUBREAPER, prctl
from .procfs import start_time
from .views import MasterView

ENVIRONMENT = "GEARMAN_WORKERS_HANDOVER"
READY = b"ready\n"
# Where this master was started, before --daemon moved it to /: the
# successor starts there, so that a relative --config means the same file.
START_DIRECTORY = os.getcwd()


def outcome_path(pid_path: Path) -> Path:
    return pid_path.with_name(pid_path.name + ".upgrade")


def successor_argv() -> list[str]:
    """How this master was started. An installed entry point is exec'd by
    its path (under a symlinked release that is the new release's), a
    `python -c ...` start by the interpreter and the original arguments."""
    script = sys.argv[0]
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return list(sys.argv)
    return [sys.executable, *sys.orig_argv[1:]]


# --- the predecessor's half --------------------------------------------------


@dataclasses.dataclass
class Successor:
    """A new master started by this one, until it is ready or given up.

    It is started through a short-lived intermediate process while this
    master is not a subreaper, so that it is orphaned at once and adopted
    by init: under systemd it is then PID 1's own child, which systemd
    must see to supervise it as the main process (v252 otherwise warns
    "not our child" and stops it without waiting). What it says arrives on
    the pipe, one line each: "pid N" (from the intermediate), then "ready"
    or "failed: REASON"; the end of the pipe means it is gone.
    """

    ready_fd: int
    deadline: float
    pid: int = 0
    ready: bool = False
    given_up: str | None = None
    _pidfd: int = -1
    _said: bytes = b""

    @classmethod
    def start(cls, lock_fd: int, metrics_fd: int, notify_env: dict[str, str], control_since: float,
              timeout: float, fork_lock: threading.Lock) -> Successor:
        ready_r, ready_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        lock_copy = os.dup(lock_fd)
        metrics_copy = os.dup(metrics_fd) if metrics_fd >= 0 else -1
        try:
            for fd in (lock_copy, ready_w, metrics_copy):
                if fd >= 0:
                    os.set_inheritable(fd, True)
            env = dict(os.environ) | notify_env
            env[ENVIRONMENT] = json.dumps({"lock_fd": lock_copy, "ready_fd": ready_w, "predecessor": os.getpid(),
                                           "control_since": control_since, "metrics_fd": metrics_copy})
            _spawn_orphan(successor_argv(), env, ready_w, fork_lock)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            for fd in (lock_copy, ready_w, metrics_copy):
                if fd >= 0:
                    os.close(fd)
        return cls(ready_r, time.monotonic() + timeout)

    def poll(self) -> None:
        """Read what the successor said, and notice its end."""
        if self.ready_fd < 0:
            return
        try:
            chunk = os.read(self.ready_fd, 4096)
        except BlockingIOError:
            return
        self._said += chunk
        *lines, self._said = self._said.split(b"\n")
        for line in lines:
            self._hear(line.decode(errors="replace"))
        if not chunk and not self.ready:
            self.give_up("exited before its children registered")

    def _hear(self, line: str) -> None:
        if line.startswith("pid ") and line[4:].isdigit():
            self.pid = int(line[4:])
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(self.pid)  # signals go to this very process, never a reused PID
        elif line == READY.decode().strip():
            self.ready = True
        elif line.startswith("failed: "):
            self.give_up(f"failed: {line[8:]}")

    def give_up(self, why: str) -> None:
        if self.given_up is None:
            self.given_up = why
            if self._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGTERM)  # it drains its own children
        self.close()

    def overdue(self, now: float) -> bool:
        return not self.ready and self.given_up is None and now >= self.deadline

    def close(self) -> None:
        for fd in (self.ready_fd, self._pidfd):
            if fd >= 0:
                os.close(fd)
        self.ready_fd = self._pidfd = -1


def _spawn_orphan(argv: list[str], env: dict[str, str], report_fd: int, fork_lock: threading.Lock) -> None:
    """Start ARGV from an intermediate process that reports its PID on
    REPORT_FD and exits, while this process is not a subreaper: the new
    process is adopted by init, not by us."""
    prctl(PR_SET_CHILD_SUBREAPER, 0)
    try:
        with fork_lock:  # the control thread holds no lock the intermediate could need
            intermediate = os.fork()
        if intermediate == 0:
            try:
                os.chdir(START_DIRECTORY)
                pid = os.posix_spawn(argv[0], argv, env)
                os.write(report_fd, f"pid {pid}\n".encode())
            finally:
                os._exit(0)
        os.waitpid(intermediate, 0)
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 1)


def record_outcome(pid_path: Path, predecessor: int, successor: int | None, reason: str) -> None:
    """What became of an upgrade, for whoever asked for it."""
    files.atomic_write(outcome_path(pid_path), json.dumps(
        {"from": predecessor, "to": successor, "ok": successor is not None, "reason": reason}) + "\n")


# --- the successor's half ----------------------------------------------------


@dataclasses.dataclass
class Handover:
    """What a master started as a successor inherited."""

    lock_fd: int
    ready_fd: int
    predecessor: int
    control_since: float
    metrics_fd: int = -1  # the predecessor's metrics socket, listening (-1: none)
    _predecessor_fd: int = -1

    @classmethod
    def from_environment(cls) -> Handover | None:
        raw = os.environ.pop(ENVIRONMENT, None)
        if raw is None:
            return None
        try:
            fields = json.loads(raw)
            handover = cls(int(fields["lock_fd"]), int(fields["ready_fd"]), int(fields["predecessor"]),
                           float(fields["control_since"]), int(fields.get("metrics_fd", -1)))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{ENVIRONMENT} is malformed ({err})") from None
        for fd in (handover.lock_fd, handover.ready_fd, handover.metrics_fd):
            if fd >= 0:
                os.set_inheritable(fd, False)  # our own children must not hold them
        with contextlib.suppress(OSError):
            handover._predecessor_fd = os.pidfd_open(handover.predecessor)  # not our parent: init adopted us
        return handover

    def predecessor_alive(self) -> bool:
        if self._predecessor_fd < 0:
            return False
        try:
            signal.pidfd_send_signal(self._predecessor_fd, 0)
            return True
        except ProcessLookupError:
            return False

    def predecessor_processes(self, processes_file: Path) -> list[identities.ProcessIdentity]:
        """The predecessor and its children, as it recorded them: our processes
        file names them until they are gone, so that a cleanup after a crash
        of ours finds them too."""
        try:
            recorded = identities.read(processes_file)
        except (OSError, identities.StateFileError):
            return []
        return [*recorded.children, recorded.master]

    def announce_ready(self) -> None:
        self._say(READY)

    def announce_failure(self, reason: str) -> None:
        """Why we give up before being ready: the predecessor reports it."""
        self._say(f"failed: {' '.join(reason.split())}\n".encode())

    def _say(self, line: bytes) -> None:
        if self.ready_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, line)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
            self.ready_fd = -1

    def close(self) -> None:
        """Once in charge, or in a forked child: drop what we inherited
        (the lock stays: the PID file object holds it)."""
        self._close_pipe()
        if self._predecessor_fd >= 0:
            os.close(self._predecessor_fd)
            self._predecessor_fd = -1


# --- the master's side: one object the main loop asks --------------------------

log = logging.getLogger("gearman_workers.master")


class Upgrades:
    """An upgrade as the master's main loop sees it. As a predecessor: start
    a successor (start), and each turn learn whether it is ready (check:
    then hand over) or given up. As a successor: tell our predecessor we
    are ready (announce_ready), then notice that the handover is done
    (check_taken_over)."""

    def __init__(self, pid_path: Path, timeout: float, pidfile: pidfiles.PidFile, notifier: Notifier,
                 fork_lock: threading.Lock, exporter: parts.Exporter | None = None,
                 handover: Handover | None = None, control: parts.Control | None = None) -> None:
        self.pid_path, self.timeout = pid_path, timeout
        self.pidfile, self.notifier, self.fork_lock, self.exporter = pidfile, notifier, fork_lock, exporter
        self.handover, self.control = handover, control
        self.successor: Successor | None = None
        self.handed_over = False
        # Exit commands sent after this moment are for us (a successor takes
        # over the listening from the moment its predecessor stopped).
        self.control_since = handover.control_since if handover else time.time()

    @property
    def busy(self) -> bool:
        return self.successor is not None or self.handover is not None

    def start(self, view: MasterView) -> None:
        """Start a successor on the code and configuration now on disk. One
        control listener at a time: the successor's from now on."""
        if self.busy:
            log.warning("upgrade asked while an upgrade is under way; ignored")
            return
        if self.control is not None:
            self.control.stop()
        try:
            self.successor = Successor.start(self.pidfile.fileno or -1,
                                             self.exporter.fileno() if self.exporter is not None else -1,
                                             self.notifier.environment(), time.time(), self.timeout, self.fork_lock)
        except OSError as err:
            log.error("upgrade failed, keeping this master: cannot start a new one: %s", err)
            record_outcome(self.pid_path, os.getpid(), None, f"cannot start a new master: {err}")
            self._listen_again(view)
            return
        log.info("upgrade: started a new master on the code and configuration on disk; it takes over once "
                 "its children are registered (upgrade_timeout %g s)", self.timeout)

    def _listen_again(self, view: MasterView) -> None:
        if self.control is not None:
            self.control.start(view)  # its catch-up applies what was sent meanwhile

    def wait_fd(self) -> int:
        """What to wait on for the successor's word (-1: nothing)."""
        return self.successor.ready_fd if self.successor is not None else -1

    def deadline(self) -> float | None:
        return self.successor.deadline if self.successor is not None else None

    def check(self, view: MasterView, listen_again: bool) -> str | None:
        """Why this master must now leave (it handed over), or None. An
        upgrade given up leaves us listening again (if LISTEN_AGAIN)."""
        successor = self.successor
        if successor is None:
            return None
        successor.poll()
        if successor.overdue(time.monotonic()):
            successor.give_up(f"was not ready within upgrade_timeout {self.timeout:g} s")
        if successor.ready:
            self._hand_over(successor)
            if self.exporter is not None:
                self.exporter.close()  # scrapes go to the new master (it shares our socket)
            return f"handed over to master {successor.pid}"
        if successor.given_up is not None:
            self._failed(successor)
            if listen_again:
                self._listen_again(view)
        return None

    def abandon(self, why: str) -> bool:
        """Give the successor up (the pool is stopping): True if there was one."""
        if self.successor is None:
            return False
        self.successor.give_up(why)
        self._failed(self.successor)
        return True

    def _hand_over(self, successor: Successor) -> None:
        self.notifier.send(mainpid=successor.pid)
        self.notifier.muted = True  # nothing more from us: it is the main process now
        self.pidfile.write(successor.pid)
        record_outcome(self.pid_path, os.getpid(), successor.pid, "handed over")
        successor.close()
        self.successor, self.handed_over = None, True
        log.info("master %d is in charge now; this one lets its children finish their jobs and leaves",
                 successor.pid)

    def _failed(self, successor: Successor) -> None:
        log.error("upgrade failed, keeping this master and its code: master %d %s", successor.pid,
                  successor.given_up)
        record_outcome(self.pid_path, os.getpid(), None, f"the new master {successor.given_up}")
        self.successor = None

    def starting_as_successor(self) -> None:
        if self.handover is not None:
            self.notifier.muted = True  # systemd hears from us once our predecessor made us its main process
            log.info("master %d takes over from master %d", os.getpid(), self.handover.predecessor)

    def announce_ready(self) -> None:
        """Tell whoever waits that the pool is ready: systemd, or as a
        successor our predecessor, who then hands over."""
        if self.handover is None:
            self.notifier.send(ready=1)
            return
        self.handover.announce_ready()
        log.info("ready; waiting for master %d to hand over", self.handover.predecessor)

    def check_taken_over(self) -> None:
        """As a successor that announced itself: the handover is done once
        our predecessor wrote our PID into the PID file (after telling
        systemd), or has died without doing so."""
        handover = self.handover
        if handover is None or handover.ready_fd >= 0:
            return
        if pidfiles.read_pid(self.pid_path) != os.getpid():
            if handover.predecessor_alive():
                return  # still handing over
            log.warning("master %d died during the handover; this one is in charge", handover.predecessor)
            self.pidfile.write()
        handover.close()
        self.handover, self.notifier.muted = None, False
        self.notifier.send(ready=1, mainpid=os.getpid())

    def forget_in_child(self) -> None:
        self.pidfile.forget_in_child()
        for part in (self.handover, self.successor):
            if part is not None:
                part.close()


# --- the operator's half: ask, and wait for the outcome -----------------------


class UpgradeFailed(RuntimeError):
    pass


def request_upgrade(pid_path: Path, processes_path: Path, timeout: float) -> str:
    """SIGUSR2 to the master named by PID_PATH, once proven to be this
    pool's master (see _open_master), then wait until it handed over
    (returns a line saying to whom) or gave up (raises UpgradeFailed)."""
    master_fd, master = _open_master(pid_path, processes_path)
    result = outcome_path(pid_path)
    try:
        result.unlink(missing_ok=True)
        signal.pidfd_send_signal(master_fd, signal.SIGUSR2)  # the process checked, whatever its PID became
    except PermissionError:
        raise UpgradeFailed(f"refusing to signal PID {master}: it belongs to another user") from None
    finally:
        os.close(master_fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = _read_outcome(result)
        if outcome is not None and outcome.get("from") == master:
            if outcome.get("ok"):
                return f"master {master} handed the pool over to master {outcome.get('to')}"
            raise UpgradeFailed(f"master {master} kept the pool: {outcome.get('reason')}")
        time.sleep(0.1)
    raise UpgradeFailed(f"master {master} did not finish the upgrade within {timeout:g} s")


def _open_master(pid_path: Path, processes_path: Path) -> tuple[int, int]:
    """A pidfd of the master, and its PID, after the checks gm-cleanup makes
    before it signals anything: `--upgrade` may run as root, and a PID file
    is only a number someone wrote. Trusted files (root's or ours, nobody
    else may write them), a processes file naming the same PID, and that very
    process (by a pidfd opened first): its recorded start time, the pool's
    lock file held open, a gearman-workers command line. Root sees every
    process; a hardened unit's ExecReload may not see the master at all
    (user namespaces), and then may signal only its own user's processes."""
    lock_path = pid_path.with_name(pid_path.name + ".lock")
    for path in dict.fromkeys((pid_path.parent, processes_path.parent, pid_path, lock_path, processes_path)):
        try:
            cleanup.check_trusted(path)
        except FileNotFoundError:
            raise UpgradeFailed(f"no running master holds {pid_path}") from None
        except cleanup.UntrustedState as err:
            raise UpgradeFailed(f"refusing to signal anything: {err}") from None
    master = pidfiles.read_pid(pid_path)
    if master is None or not pidfiles.is_locked(pid_path):
        raise UpgradeFailed(f"no running master holds {pid_path}")
    try:
        recorded = identities.read(processes_path).master
    except (identities.StateFileError, OSError) as err:
        raise UpgradeFailed(f"refusing to signal PID {master}: {processes_path} is unreadable ({err})") from None
    if recorded.pid != master:
        raise UpgradeFailed(f"refusing to signal PID {master}: {processes_path} names master {recorded.pid}")
    try:
        fd = os.pidfd_open(master)
    except ProcessLookupError:
        raise UpgradeFailed(f"no running master: PID {master} is gone") from None
    why = _not_the_master(master, recorded, lock_path)
    if why is not None:
        os.close(fd)
        raise UpgradeFailed(f"refusing to signal PID {master}: it {why}")
    return fd, master


def _not_the_master(pid: int, recorded: identities.ProcessIdentity, lock_path: Path) -> str | None:
    started = start_time(pid)
    if started is None:
        # Hidden from us (a hardened unit's ExecReload runs in a user
        # namespace of its own): only root must see everything; anyone else
        # may signal only their own user's processes, which the kernel
        # checks when the signal goes out.
        return "is not visible in /proc" if os.geteuid() == 0 else None
    if started != recorded.start_time:
        return "is not the process the state file recorded (its start time differs)"
    if not _holds_open(pid, lock_path):
        return f"does not hold {lock_path}"
    if not cleanup.is_ours(pid):
        return "does not run gearman-workers"
    return None


def _holds_open(pid: int, path: Path) -> bool:
    """PID has PATH open (the file itself, not just its name): the lock's
    open file, which a master keeps through --daemon and hands over."""
    wanted = os.stat(path, follow_symlinks=False)
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for entry in entries:
        with contextlib.suppress(OSError):
            held = os.stat(entry.path)
            if (held.st_dev, held.st_ino) == (wanted.st_dev, wanted.st_ino):
                return True
    return False


def _read_outcome(path: Path) -> dict | None:
    try:
        outcome = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return outcome if isinstance(outcome, dict) else None
