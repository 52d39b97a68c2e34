"""The soft time limit of one job: SIGALRM raises ``JobTimeout`` inside the
task's own code, so it can clean up (``finally``, ``with``). The hard limit
is the master's: a child still busy ``kill_grace`` seconds later is killed.

``JobTimeout`` derives from BaseException, like KeyboardInterrupt: a task's
``except Exception`` does not swallow it by accident.

Task code may install its own SIGALRM handler, arm its own alarm or block
the signal. The timer takes the signal back after every job (one identity
comparison while nobody touched it) and unblocks it before every
time-limited job, so such code can cost at most its own job the soft
limit (the master's hard limit still holds), never a later one.
"""

from __future__ import annotations

import signal


class JobTimeout(BaseException):
    """The job ran past its time limit."""


class JobTimer:
    def __init__(self) -> None:
        self.running = False
        self.expired = False
        self._message = ""
        self._handler = self._on_alarm  # one object: getsignal() returns what we installed

    def install(self) -> None:
        signal.signal(signal.SIGALRM, self._handler)

    def arm(self, seconds: float, task: str) -> None:
        self.expired = False
        if seconds > 0:
            # The handler is ours (reclaim() ran after the last job); a task
            # may have left the signal blocked, though (C code that masks
            # signals, pthread_sigmask): one system call per time-limited job.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGALRM,))
            self._message = f"task {task} exceeded its time limit of {seconds:g} s"
            self.running = True
            signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        if self.running:
            self.running = False  # first: an alarm that fires now is ignored
            signal.setitimer(signal.ITIMER_REAL, 0)

    def reclaim(self) -> None:
        """Our handler back, and no alarm of the task's left pending."""
        if signal.getsignal(signal.SIGALRM) is not self._handler:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._handler)

    def check(self) -> None:
        """Raise JobTimeout if the limit passed (for a task that caught it)."""
        if self.expired:
            raise JobTimeout(self._message)

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self.running:
            self.running = False
            self.expired = True
            raise JobTimeout(self._message)
