"""The soft time limit of one job: SIGALRM raises ``JobTimeout`` inside the
task's own code, so it can clean up (``finally``, ``with``). The hard limit
is the master's: a child still busy ``kill_grace`` seconds later is killed.

``JobTimeout`` derives from BaseException, like KeyboardInterrupt: a task's
``except Exception`` does not swallow it by accident.
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

    def install(self) -> None:
        signal.signal(signal.SIGALRM, self._on_alarm)

    def arm(self, seconds: float, task: str) -> None:
        self.expired = False
        if seconds > 0:
            self._message = f"task {task} exceeded its time limit of {seconds:g} s"
            self.running = True
            signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        if self.running:
            self.running = False  # first: an alarm that fires now is ignored
            signal.setitimer(signal.ITIMER_REAL, 0)

    def check(self) -> None:
        """Raise JobTimeout if the limit passed (for a task that caught it)."""
        if self.expired:
            raise JobTimeout(self._message)

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self.running:
            self.running = False
            self.expired = True
            raise JobTimeout(self._message)
