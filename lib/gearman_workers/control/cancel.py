"""cancel: give up one job.

Sent by `gm-ctl cancel --handle H`, `--unique U` or `--job ID`, in steps
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

A job of a task with retries that waits for its next run (`--job ID`, the
id its failures name) is a record in Redis, not yet a job in gearmand:
one pool (the jobs leader, if there is one) marks it cancelled there
(jobs/store.py), and a run of it already submitted does nothing. If its
run is under way, gm-ctl cancels that run by its unique (gw:ID:N) instead.

The message: key = the handle, unique or job id, value = "handle" |
"unique" | "job", n = 1 for step 2.
"""

from __future__ import annotations

from ..commands import CancelJob
from ..jobs.policy import CHAIN_ID
from .command import Pool
from .messages import BadMessage, Message
from .store import NotKept

NAME = "cancel"
HANDLE, UNIQUE, JOB = "handle", "unique", "job"
QUEUED = 1
MAX_ID = 256
RUNNING_HERE = "cancelling"  # how an answer that found the job begins


class Cancel(NotKept):
    name = NAME

    def check(self, message: Message) -> None:
        if not message.key or len(message.key) > MAX_ID or any(c.isspace() for c in message.key):
            raise BadMessage(f"cancel needs a job handle or unique of 1 to {MAX_ID} characters, without spaces")
        if message.value not in (HANDLE, UNIQUE, JOB):
            raise BadMessage(f"cancel needs value {HANDLE!r}, {UNIQUE!r} or {JOB!r}")
        if message.value == JOB and not CHAIN_ID.fullmatch(message.key):
            raise BadMessage("cancel: a job id is 16 hex digits")
        if message.n not in (None, 0, QUEUED) or (message.n == QUEUED and message.value != HANDLE):
            raise BadMessage("cancel of a queued job (n = 1) takes a handle")

    def apply(self, pool: Pool, message: Message) -> str:
        assert message.key is not None
        if message.value == JOB:
            return _cancel_chain(pool, message.key)
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
CANCELLED_JOB = "cancelled job"  # how an answer that cancelled a waiting job begins


def _cancel_chain(pool: Pool, chain: str) -> str:
    state = pool.job_store().cancel(chain)
    if state == "now":
        return f"{CANCELLED_JOB} {chain}: its next run will not happen"
    if state == "missing":
        return f"no job {chain} in Redis (its task has no retries, or its record expired)"
    return f"job {chain} is {state}: no run waits to be cancelled"


def message(job: str, by: str, queued: bool = False, hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    return Message(NAME, key=job, value=by, n=QUEUED if queued else None, hosts=hosts, pool=pool,
                   carries_value=True)
