"""The user's hooks ([hooks]): code of theirs the pool calls around a
child's and a job's life, loaded with the task code in the master.

    post_fork(worker)                each new child, before it connects and registers
    before_job(worker, job)          before each job (also one refused as poison or timed out)
    after_job(worker, job, outcome)  after each job's answer went out: done, failed, timeout, cancelled, poison
    on_failure(worker, job, exc)     the task raised EXC (JobTimeout and JobCancelled too), before the answer
    child_exit(worker, reason)       a child leaving gracefully: "recycled" (it asked: max_jobs, max_memory)
                                     or "stopped" (the master asked: a stop, an exit broadcast, scaling down,
                                     max_age, a reload); at most exit_timeout seconds
    master_ready(pool)               once every child is registered, the first time
    master_exit(pool)                as the master leaves, after its children; at most exit_timeout seconds

A hook that raises is logged with its traceback and changes nothing else:
no job's outcome, no child's life. One that is not set costs one test of
None. Hooks run in the process named (the child, or the master's main
loop), outside the job's time limit; the two exit hooks are bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any

from .tasks import resolve

log = logging.getLogger("gearman_workers.hooks")

NAMES = ("post_fork", "before_job", "after_job", "on_failure", "child_exit", "master_ready", "master_exit")
Hook = Callable[..., Any]


class HookTimeout(BaseException):
    """An exit hook ran out of its time (a BaseException: task code's `except Exception` lets it through)."""


@dataclasses.dataclass(frozen=True)
class Pool:
    """What master_ready and master_exit receive."""

    name: str
    host: str
    pid: int
    config: Any


@dataclasses.dataclass(frozen=True)
class Hooks:
    post_fork: Hook | None = None
    before_job: Hook | None = None
    after_job: Hook | None = None
    on_failure: Hook | None = None
    child_exit: Hook | None = None
    master_ready: Hook | None = None
    master_exit: Hook | None = None
    exit_timeout: float = 5.0

    def call(self, name: str, *args: Any) -> None:
        """Hook NAME with ARGS, if set; what it raises is logged and dropped."""
        hook = getattr(self, name)
        if hook is None:
            return
        try:
            hook(*args)
        except HookTimeout:
            raise
        except BaseException:  # SystemExit too: a hook never ends a child
            log.exception("hook %s raised; ignored", name)

    def call_bounded(self, name: str, *args: Any) -> None:
        """As call(), given at most exit_timeout seconds (SIGALRM: the
        caller must not have an alarm of its own running)."""
        if getattr(self, name) is None:
            return
        try:
            with _deadline(self.exit_timeout):
                self.call(name, *args)
        except HookTimeout:
            log.warning("hook %s did not return within exit_timeout %g s; left behind", name, self.exit_timeout)


def load(specs: dict[str, str | None], exit_timeout: float) -> Hooks:
    """The hooks SPECS names (name -> "module:callable" or None); TaskLoadError if one does not load."""
    return Hooks(**{name: resolve(spec) for name, spec in specs.items() if spec}, exit_timeout=exit_timeout)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise HookTimeout

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
