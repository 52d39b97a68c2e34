"""Exponential back-off between attempts, shared by every retry loop in the
pool: a child's gearmand connections, the control listener's Redis
connection, and the master's respawning of a slot whose children crash."""

from __future__ import annotations


class Backoff:
    """Delays that double after each failure, from FIRST up to MAXIMUM.

    With ``immediate_first`` the first failure is retried at once (a single
    crash is usually bad luck; a second in a row is a pattern)."""

    def __init__(self, first: float, maximum: float, immediate_first: bool = False) -> None:
        self.first = first
        self.maximum = maximum
        self.immediate_first = immediate_first
        self.failures = 0

    def next(self) -> float:
        """Count one more failure; return how long to wait before retrying."""
        self.failures += 1
        steps = self.failures - (2 if self.immediate_first else 1)
        if steps < 0:
            return 0.0
        return min(self.maximum, self.first * 2.0 ** steps)

    def reset(self) -> None:
        self.failures = 0
