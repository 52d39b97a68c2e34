"""What the master can be asked to do, and its inbox. Signal handlers and
the other threads only put a command in the inbox; the main loop acts."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .autoscale import QueueDepth


@dataclasses.dataclass(frozen=True)
class Stop:
    why: str
    graceful: bool = True
    hurry_if_stopping: bool = False  # a second Ctrl-C means: now


@dataclasses.dataclass(frozen=True)
class Reload:
    """Re-read the configuration and replace the children one at a time."""


@dataclasses.dataclass(frozen=True)
class Upgrade:
    """Hand the pool to a fresh master running the code on disk (handover.py)."""


@dataclasses.dataclass(frozen=True)
class ReopenLogs:
    """Reopen the log file (logrotate's postrotate sends SIGUSR1), in the master and every child."""


@dataclasses.dataclass(frozen=True)
class Ignored:
    """A signal that means nothing to the pool: logged, never fatal."""

    signal: str


@dataclasses.dataclass(frozen=True)
class Scale:
    to: int | None = None
    by: int = 0


@dataclasses.dataclass(frozen=True)
class PublishData:
    values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PauseTasks:
    """The tasks this pool must not offer gearmand now (control/pause.py)."""

    paused: frozenset[str]


@dataclasses.dataclass(frozen=True)
class OffersChanged:
    """The rows of these slots changed (taskctl/governor.py): tell their children."""

    slots: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class CancelJob:
    """Make the child in SLOT (PID) give up job HANDLE (control/cancel.py)."""

    slot: int
    pid: int
    handle: str
    server: int


@dataclasses.dataclass(frozen=True)
class QueueSeen:
    """What gearmand's queues held for the shared tasks (autoscale.py)."""

    depth: QueueDepth


Command = (Stop | Reload | Upgrade | ReopenLogs | Ignored | Scale | PublishData | QueueSeen | PauseTasks
           | OffersChanged | CancelJob)

# Signals an operator or a tool may send by mistake, whose default would
# end the master (and so every child and the jobs in hand).
MEANINGLESS_SIGNALS = (signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGPWR)

FROM_SIGNAL: dict[int, Command] = {
    signal.SIGTERM: Stop("SIGTERM"),
    signal.SIGINT: Stop("SIGINT", hurry_if_stopping=True),
    signal.SIGQUIT: Stop("SIGQUIT", graceful=False),
    signal.SIGHUP: Reload(),
    signal.SIGUSR1: ReopenLogs(),
    signal.SIGUSR2: Upgrade(),
    signal.SIGTTIN: Scale(by=1),
    signal.SIGTTOU: Scale(by=-1),
}
FROM_SIGNAL.update({sig: Ignored(signal.Signals(sig).name) for sig in MEANINGLESS_SIGNALS})


class Inbox:
    """The master's queue of commands, and the pipes that end its wait:
    one written when a command arrives (and by the signal wake-up), one
    its children write to when their registration changes (nudge_fd)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wake_r, self.wake_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._nudged_r, self.nudge_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def put(self, command: Command) -> None:
        """From any thread."""
        self._queue.put(command)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_fd, b"c")

    def put_from_signal(self, command: Command) -> None:
        """From a signal handler: SimpleQueue.put is safe there, and the
        signal wake-up fd (set to wake_fd) ends the wait."""
        self._queue.put(command)

    def empty(self) -> bool:
        return self._queue.empty()

    def taken(self) -> Iterator[Command]:
        while not self._queue.empty():
            yield self._queue.get_nowait()

    def fds(self) -> tuple[int, int]:
        """What the main loop waits on."""
        return self._wake_r, self._nudged_r

    def drain(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 4096):
                pass

    def forget_in_child(self) -> None:
        """A child keeps only nudge_fd, to nudge its master."""
        for fd in (self._wake_r, self.wake_fd, self._nudged_r):
            os.close(fd)
