"""The soft time limit of one job: SIGALRM raises ``JobTimeout`` inside the
task's own code, so it can clean up (``finally``, ``with``). The hard limit
is the master's: a child still busy ``kill_grace`` seconds later is killed.

``JobTimeout`` derives from BaseException, like KeyboardInterrupt: a task's
``except Exception`` does not swallow it by accident.

The alarm is set lazily. Jobs much shorter than their limit are the rule,
so a job does not set and clear an interval timer of its own (two system
calls): it leaves a pending alarm in place when that alarm comes no later
than its own deadline. When the alarm fires inside a job that still has
time left, the handler moves it on to that job's deadline; outside a job it
does nothing. A stream of one-second jobs under a 30-second limit sets the
timer once every 30 seconds.

Task code may install its own SIGALRM handler, arm its own alarm or block
the signal. The timer takes the handler back after every job (one identity
comparison while nobody touched it), and a child with time-limited tasks
unblocks the signal after every job, once its answer is sent: such code
can cost at most its own job the soft limit (the master's hard limit
still holds), never a later one. (A task that cancels the pool's pending
alarm and puts its handler back leaves the jobs that start before that
alarm was due without a soft limit: at most one limit's length of them.)
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.getsignal and pthread_sigmask wrap it in enum conversions (2 us a call)
import signal
import time

# An alarm this close to the deadline is the deadline (the interval timer
# rounds to the clock's resolution; firing again for microseconds is waste).
SLACK = 0.0005


class JobTimeout(BaseException):
    """The job ran past its time limit."""


class JobTimer:
    def __init__(self) -> None:
        self.deadline = 0.0  # the running job's soft limit (monotonic seconds); 0: no limited job runs
        self.expired = False
        self._alarm_at = 0.0  # when the pending alarm fires; 0: none pending
        self._task = ""
        self._limit = 0.0
        self._handler = self._on_alarm  # one object: getsignal() returns what we installed

    def install(self) -> None:
        signal.signal(signal.SIGALRM, self._handler)
        self.unblock()

    def arm(self, task: str, limit: float, now: float) -> float:
        """A job of TASK with a LIMIT starts at NOW: its deadline."""
        self.expired = False
        self._task, self._limit = task, limit
        deadline = self.deadline = now + limit
        if not now < self._alarm_at <= deadline:  # none pending, or it would come too late
            self._set(deadline - now, deadline)
        return deadline

    def disarm(self) -> None:
        """The job is over: a pending alarm stays, and finds no job."""
        self.deadline = 0.0

    @staticmethod
    def unblock() -> None:
        """After a job: a task may have left the signal blocked (C code that
        masks signals, pthread_sigmask). One system call, off the answer's way."""
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGALRM,))

    def reclaim(self) -> None:
        """Our handler back, and no alarm of the task's left pending."""
        if _signal.getsignal(signal.SIGALRM) is not self._handler:
            self._set(0.0, 0.0)
            signal.signal(signal.SIGALRM, self._handler)

    def check(self) -> None:
        """Raise JobTimeout if the limit passed (for a task that caught it)."""
        if self.expired:
            raise JobTimeout(self.message())

    def message(self) -> str:
        return f"task {self._task} exceeded its time limit of {self._limit:g} s"

    def _set(self, seconds: float, at: float) -> None:
        self._alarm_at = at
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _on_alarm(self, signum: int, frame: object) -> None:
        self._alarm_at = 0.0
        deadline = self.deadline
        if not deadline:
            return  # between jobs: the next limited job sets a new alarm
        now = time.monotonic()
        if now < deadline - SLACK:  # an earlier job's alarm: on to this job's deadline
            self._set(deadline - now, deadline)
            return
        self.deadline = 0.0
        self.expired = True
        raise JobTimeout(self.message())
