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
comparison while nobody touched it). A blocked signal costs nothing to
check for: an alarm found overdue when a job starts was blocked, so it is
unblocked then; and the master sends UNBLOCK_SIGNAL to a child still busy
UNBLOCK_AFTER seconds past its deadline, whose handler unblocks SIGALRM: a
pending alarm is then delivered and the soft limit reaches the task. (Task
code that blocks every signal, or cancels the pool's pending alarm and puts
its handler back, gets the master's hard limit only.)
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.getsignal and pthread_sigmask wrap it in enum conversions (2 us a call)
import signal
import time

# The master's word to a child still busy past its deadline: "unblock SIGALRM".
# A real-time signal: no library or task gives it a meaning of its own.
UNBLOCK_SIGNAL = signal.SIGRTMIN + 2
UNBLOCK_AFTER = 0.1  # seconds past the deadline: the alarm had its chance

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
        signal.signal(UNBLOCK_SIGNAL, self._on_unblock)
        self.unblock()

    def arm(self, task: str, limit: float, now: float) -> float:
        """A job of TASK with a LIMIT starts at NOW: its deadline."""
        self.expired = False
        self._task, self._limit = task, limit
        deadline = self.deadline = now + limit
        alarm_at = self._alarm_at
        if now < alarm_at <= deadline:
            return deadline  # the pending alarm comes first; its handler moves it on
        if 0 < alarm_at <= now:  # it was due and nobody saw it: task code blocked the signal
            self.unblock()
        self._set(deadline - now, deadline)
        return deadline

    def job_over(self) -> None:
        """After every job, limited or not: a pending alarm stays, and finds
        no job; our handler is back, and no alarm of the task's is left."""
        self.deadline = 0.0
        if _signal.getsignal(signal.SIGALRM) is not self._handler:
            self._set(0.0, 0.0)
            signal.signal(signal.SIGALRM, self._handler)

    @staticmethod
    def unblock() -> None:
        """Task code may have left the signal blocked (C code that masks
        signals, pthread_sigmask)."""
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGALRM,))

    def _on_unblock(self, signum: int, frame: object) -> None:
        """The master's UNBLOCK_SIGNAL: an alarm that came while blocked is
        delivered now, and its handler ends the task if its time is up."""
        self.unblock()

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
