"""Any executable as a task: `NAME = { command = ["/usr/local/bin/resize", "--width", "100"] }`.

The contract (docs/command-tasks.md):
- the payload is the process's stdin; its stdout is the result, up to
  max_output bytes (beyond: the job fails, the process is killed);
- exit status 0 is success; anything else fails the job with a message
  that carries the status (or the signal) and the last lines of stderr;
- lines written to file descriptor 3 talk to the client while the job
  runs: `status N D` (WORK_STATUS), `data TEXT` (WORK_DATA), `warning
  TEXT` (WORK_WARNING);
- the job's task, handle and unique are in GEARMAN_TASK, GEARMAN_HANDLE
  and GEARMAN_UNIQUE; `env` adds to the pool's environment, `cwd` is
  where it starts (through `env -C`); no shell unless the command is one.

The process is started with posix_spawn in a process group of its own:
no fork of the child's memory, no Python between fork and exec (the
child has a heartbeat thread). The time limit, a cancel, or anything that
ends the job early kills the whole group and reaps it. While it runs the
child waits in poll(), so its own signals are handled as ever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
from typing import Any

STDERR_KEPT = 4096   # bytes of stderr kept for the failure message
STDERR_LINES = 5     # lines of it shown
STATUS_FD = 3
CHUNK = 65536
# Signals the spawned process gets at their defaults: the child ignores or
# handles them, and an exec keeps what is ignored.
DEFAULT_SIGNALS = tuple(sig for sig in signal.valid_signals() if sig not in (signal.SIGKILL, signal.SIGSTOP))


class CommandFailed(Exception):
    """The command did not succeed; the text says how, in one line."""


@dataclasses.dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    max_output: int = 16 * 1024 * 1024


class Talker:
    """What a command's status lines reach: the worker's python-gearman API."""

    def __init__(self, worker: Any, job: Any) -> None:
        self.worker, self.job = worker, job

    def line(self, raw: bytes) -> None:
        word, _, rest = raw.partition(b" ")
        if word == b"status":
            numbers = rest.split()
            if len(numbers) == 2 and all(n.isdigit() for n in numbers):
                self.worker.send_job_status(self.job, int(numbers[0]), int(numbers[1]))
                return
        elif word == b"data":
            self.worker.send_job_data(self.job, rest)
            return
        elif word == b"warning":
            self.worker.send_job_warning(self.job, rest)
            return
        self.worker.send_job_warning(self.job, b"unreadable status line: " + raw[:200])


class CommandTask:
    """The task callable of a command task: one process per job."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.argv = list(command.argv) if not command.cwd else ["env", "-C", command.cwd, "--", *command.argv]

    def __call__(self, worker: Any, job: Any) -> bytes:
        run = _Run(self.command.max_output, Talker(worker, job))
        run.spawn(self.argv, self._environment(job))
        try:
            run.exchange(job.data)
            status = run.wait()
        finally:
            run.end()
        if status != 0:
            raise CommandFailed(f"{self.command.argv[0]} {_how(status)}{run.stderr_tail()}")
        return bytes(run.stdout)

    def _environment(self, job: Any) -> dict[str, str]:
        return {**os.environ, **dict(self.command.env), "GEARMAN_TASK": job.task, "GEARMAN_HANDLE": job.handle,
                "GEARMAN_UNIQUE": job.unique}


class _Run:
    """One process, its four pipes, and what came out of them."""

    def __init__(self, max_output: int, talker: Talker) -> None:
        self.max_output, self.talker = max_output, talker
        self.pid = 0
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.status_line = bytearray()
        self.ours: dict[int, str] = {}  # our end of each pipe -> stdin, stdout, stderr, status

    def spawn(self, argv: list[str], env: dict[str, str]) -> int:
        theirs = []
        try:
            for name in ("stdin", "stdout", "stderr", "status"):
                read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                mine, their = (write_end, read_end) if name == "stdin" else (read_end, write_end)
                os.set_blocking(their, True)
                self.ours[mine] = name
                theirs.append(their)
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(theirs)]
            self.pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions, setpgroup=0,
                                       setsigmask=(), setsigdef=DEFAULT_SIGNALS)
        except OSError as err:
            self.end()
            raise CommandFailed(f"cannot run {argv[0]}: {err.strerror or err}") from None
        finally:
            for fd in theirs:
                os.close(fd)
        return self.pid

    def exchange(self, payload: bytes) -> None:
        """Feed stdin, read the rest, until every pipe is closed."""
        view, poller = memoryview(payload), select.poll()
        for fd, name in self.ours.items():
            poller.register(fd, select.POLLOUT if name == "stdin" else select.POLLIN)
        if not payload:
            self._close(_key(self.ours, "stdin"), poller)
        while self.ours:
            for fd, _ in poller.poll():
                if self.ours.get(fd) == "stdin":
                    view = self._feed(fd, view, poller)
                elif fd in self.ours:
                    self._drain(fd, poller)

    def _feed(self, fd: int, view: memoryview, poller: Any) -> memoryview:
        try:
            view = view[os.write(fd, view[:CHUNK]):]
        except BlockingIOError:
            return view
        except BrokenPipeError:  # it does not read its stdin: fine
            view = view[len(view):]
        if not view:
            self._close(fd, poller)
        return view

    def _drain(self, fd: int, poller: Any) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not data:
            self._close(fd, poller)
            return
        name = self.ours[fd]
        if name == "stdout":
            self.stdout += data
            if len(self.stdout) > self.max_output:
                raise CommandFailed(f"output over the {self.max_output}-byte limit (max_output); "
                                    "the command was killed")
        elif name == "stderr":
            self.stderr = (self.stderr + data)[-STDERR_KEPT:]
        else:
            self._status(data)

    def _status(self, data: bytes) -> None:
        self.status_line += data
        *lines, rest = self.status_line.split(b"\n")
        self.status_line = bytearray(rest[-CHUNK:])
        for line in lines:
            self.talker.line(bytes(line).rstrip(b"\r"))

    def _close(self, fd: int, poller: Any) -> None:
        poller.unregister(fd)
        del self.ours[fd]
        os.close(fd)

    def wait(self) -> int:
        """Its exit status, once it exited; what it left in its group is killed before it is reaped (a
        zombie still holds the group's number: no other process can have it meanwhile)."""
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return status

    def end(self) -> None:
        """Whatever happened: the group killed and the process reaped (once it has exited, no group is left
        for a stray process of the command's to hide in), our ends closed."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        for fd in list(self.ours):
            os.close(fd)
        self.ours.clear()

    def stderr_tail(self) -> str:
        lines = bytes(self.stderr).decode("utf-8", "replace").strip().splitlines()[-STDERR_LINES:]
        return f"; stderr: {' | '.join(lines)}" if lines else ""


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _key(table: dict[int, str], name: str) -> int:
    return next(fd for fd, value in table.items() if value == name)

