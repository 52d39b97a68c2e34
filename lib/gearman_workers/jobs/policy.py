"""What a failed job becomes: run again later, or a dead letter.

A run's unique says which run it is. The first run carries the client's
unique; every later one is submitted by the leader as ``gw:CHAIN:N``
(CHAIN: 16 hex digits naming the failed job, N: the run, from 1 after a
dead letter is retried by hand). The same run submitted twice has the same
unique, so gearmand folds the two while the first is queued or running.
"""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TaskSpec

JITTER = 0.1
CHAIN_ID = re.compile(r"[0-9a-f]{16}")  # what new_chain() makes: names a failed job
RUN_UNIQUE = re.compile(rb"gw:([0-9a-f]{16}):([0-9]{1,3})")


class Permanent(Exception):
    """Raised by a task (or a subclass raised): this failure will not get
    better, so the job is not run again; it goes to the dead letters."""


@dataclasses.dataclass(frozen=True)
class Run:
    """Which run of which chain a job is: a first run (chain None, run 1)
    or one the leader submitted."""

    chain: str | None
    attempt: int  # how many runs the job has had, this one included

    @classmethod
    def of(cls, unique: bytes) -> Run:
        if unique.startswith(b"gw:"):
            found = RUN_UNIQUE.fullmatch(unique)
            if found:
                return cls(found.group(1).decode(), int(found.group(2)))
        return FIRST_RUN

    def unique(self) -> bytes:
        assert self.chain is not None
        return f"gw:{self.chain}:{self.attempt}".encode()


FIRST_RUN = Run(None, 1)


def new_chain() -> str:
    return secrets.token_hex(8)


def retry_delay(spec: TaskSpec, attempt: int, draw: float | None = None) -> float | None:
    """Seconds until run ATTEMPT + 1, or None when ATTEMPT was the last one
    allowed. Doubling from retry_delay, capped, with up to 10 % jitter
    either way (DRAW in [0, 1): the jitter's random number, for tests)."""
    if attempt > spec.retries:
        return None
    base = min(spec.retry_delay * 2 ** (attempt - 1), spec.retry_max_delay)
    draw = random.random() if draw is None else draw
    return base * (1 - JITTER + 2 * JITTER * draw)


def retried(err: BaseException | None) -> bool:
    """Whether a failure with ERR (None: no exception of the task's, e.g. a
    child killed under it) may be run again."""
    return not isinstance(err, Permanent)
