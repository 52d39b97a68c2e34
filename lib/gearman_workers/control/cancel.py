"""cancel: give up one job.

Sent by `gm-ctl cancel --handle H` or `--unique U`, in two steps, both
answered by the pools (acks.py); nothing is kept:

1. To every pool: "cancel it if one of your children runs it". The pool
   whose child runs it tells the child (OFFERS_SIGNAL with the job in its
   switchboard row): JobCancelled is raised inside the task, whose
   `finally` blocks run, and the child answers the client with a failure
   naming the cancel. A child that has not let go after kill_grace (stuck
   in C code) is killed and replaced; gearmand is first told to drop the
   job (`cancel job`), so that it is not handed to anyone again (its client
   then gets gearmand's bare failure). A task with retries does not retry
   a cancelled job.
2. Only when no pool runs it, and only by handle: to one pool, "drop it
   from your gearmands' queues". gearmand 1.1's `cancel job` drops a
   running job too, without telling its worker: that is why it is the
   second step, not the first. gearmand cannot find a job by its unique,
   so a queued job is cancelled by its handle only.

The message: key = the handle or unique, value = "handle" | "unique",
n = 1 for step 2.
"""

from __future__ import annotations

from typing import Any

from ..commands import CancelJob
from .command import Pool
from .messages import BadMessage, Message
from .store import Keys

NAME = "cancel"
HANDLE, UNIQUE = "handle", "unique"
QUEUED = 1
MAX_ID = 256
RUNNING_HERE = "cancelling"  # how an answer that found the job begins


class Cancel:
    name = NAME

    def check(self, message: Message) -> None:
        if not message.key or len(message.key) > MAX_ID or any(c.isspace() for c in message.key):
            raise BadMessage(f"cancel needs a job handle or unique of 1 to {MAX_ID} characters, without spaces")
        if message.value not in (HANDLE, UNIQUE):
            raise BadMessage(f"cancel needs value {HANDLE!r} or {UNIQUE!r}")
        if message.n not in (None, 0, QUEUED) or (message.n == QUEUED and message.value != HANDLE):
            raise BadMessage("cancel of a queued job (n = 1) takes a handle")

    def record(self, pipe: Any, keys: Keys, scope: str, message: Message, raw: bytes) -> None:
        """Not kept: a cancel is for the job as it is now."""

    def recorded(self, client: Any, keys: Keys, scope: str, message: Message) -> bytes | None:
        return None

    def restore(self, client: Any, keys: Keys, scope: str, message: Message, raw: bytes | None) -> None:
        """Nothing was kept."""

    def apply(self, pool: Pool, message: Message) -> str:
        assert message.key is not None
        if message.n == QUEUED:
            dropped = pool.cancel_queued(message.key)
            return (f"dropped queued job {message.key} from gearmand {', '.join(dropped)}" if dropped
                    else f"no gearmand of this pool holds job {message.key}")
        by_handle = message.value == HANDLE
        running = pool.running_job(message.key if by_handle else None,
                                   None if by_handle else message.key.encode())
        if running is None:
            return f"job {message.key} is not running here"
        pool.submit(CancelJob(running.slot, running.pid, running.handle, running.server))
        return f"{RUNNING_HERE} job {running.handle} in child {running.pid}"

    def describe(self, message: Message) -> str:
        return f"{NAME} {'queued ' if message.n == QUEUED else ''}{message.value} {message.key}"


CANCEL = Cancel()


def message(job: str, by: str, queued: bool = False, hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    return Message(NAME, key=job, value=by, n=QUEUED if queued else None, hosts=hosts, pool=pool,
                   carries_value=True)
