"""Capacity that follows the queue: how many shared children the pool wants.

The queue watcher (queues.py) hands the master, once a second, how many
jobs of the pool's shared tasks wait in every gearmand. The Autoscaler
here takes plain decisions on it in the master's main loop (tests drive
it with numbers):

- up, while jobs wait and no shared child is spare (idle or still
  starting): by as many children as jobs wait, up to max_processes. A
  child that is starting counts as spare, so a burst is answered once,
  not once per poll while the new children register.
- down, once no job has waited for scale_down_after seconds: one idle
  child per poll, down to min_processes. Any waiting job restarts that
  clock: a queue that comes and goes does not make the pool flap.
- nothing, when no gearmand answered: no news is not an empty queue.
"""

from __future__ import annotations

import dataclasses

from .config import Config


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    waiting: int   # jobs of the watched tasks that wait, on the servers that answered
    answered: int  # servers that answered
    asked: int


@dataclasses.dataclass(frozen=True)
class Decision:
    to: int
    why: str

    def direction(self, desired: int) -> str:
        return "up" if self.to > desired else "down"


class Autoscaler:
    def __init__(self, low: int, high: int, scale_down_after: float) -> None:
        self.low, self.high, self.scale_down_after = low, high, scale_down_after
        self.quiet_since: float | None = None
        self.decisions = {"up": 0, "down": 0}
        self.last: Decision | None = None
        self.waiting = 0  # as last seen (metrics, status)

    def decide(self, now: float, depth: QueueDepth, desired: int, spare: int) -> Decision | None:
        """What to do, given the queue DEPTH and the shared children: DESIRED
        of them wanted, SPARE of those idle or starting."""
        if not self.low <= desired <= self.high:  # a reload moved the bounds
            return self._decided(desired, min(self.high, max(self.low, desired)),
                                 f"outside min_processes {self.low} .. max_processes {self.high}")
        if depth.answered == 0:
            return None
        self.waiting = depth.waiting
        if depth.waiting:
            self.quiet_since = None
            if spare == 0 and desired < self.high:
                return self._decided(desired, min(self.high, desired + depth.waiting),
                                     f"{depth.waiting} job(s) waiting and all {desired} children busy")
            return None
        if self.quiet_since is None:
            self.quiet_since = now
        quiet = now - self.quiet_since
        if quiet >= self.scale_down_after and desired > self.low and spare > 0:
            return self._decided(desired, desired - 1, f"no job waiting for {quiet:.0f} s")
        return None

    def _decided(self, desired: int, to: int, why: str) -> Decision:
        decision = Decision(to, why)
        self.decisions[decision.direction(desired)] += 1
        self.last = decision
        return decision


def reconfigured(current: Autoscaler | None, config: Config, watching: bool) -> Autoscaler | None:
    """After a reload: the same autoscaler with the new bounds (its history
    kept), a new one, or none: without a queue watcher a new one could not
    decide."""
    if not config.autoscaling:
        return None
    if current is None:
        return Autoscaler(*config.bounds(), config.scale_down_after) if watching else None
    current.low, current.high = config.bounds()
    current.scale_down_after = config.scale_down_after
    return current
