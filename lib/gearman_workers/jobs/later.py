"""Delayed jobs: a job kept in Redis and submitted to gearmand when it is
due, as a background job, by the fleet's jobs leader (keeper.py), exactly
once, on Debian's gearmand 1.1 too (SUBMIT_JOB_EPOCH runs a due job only
when something else wakes the workers there; nothing here relies on it).

A delayed job is a chain (store.py) in state `delayed` with no run yet,
due at a time on Redis's clock: the leader claims it like a retry and
submits run 1 as gw:ID:1, with its priority. A child of this project that
gets it looks the run up before it runs and marks it ended before it
answers, so a second submission of it (its leader died between the two)
does nothing; its task sees the unique the job was given (or gw:ID:1).
A job delayed for a task with retries is retried like any of its jobs.

Written with plain commands (HSET, EXPIRE, ZADD, in that order: the
leader skips a due id whose record is not there yet), so that the
operator's Redis user and an application's can write it; see
docs/jobs.md for the rights.
"""

from __future__ import annotations

import math
from typing import Any

import redis

from .keys import JobKeys
from .policy import new_chain
from .results import DEFAULT_PREFIX
from .submit import PRIORITIES

MAX_DELAY = 366 * 86400  # a year (and a day): a later time is a mistake, not a plan
MAX_PAYLOAD = 16 * 1024 * 1024
KEEP_AFTER_DUE = 7 * 86400  # a record nobody submitted (no pool ran for a week) goes


class BadDelayedJob(ValueError):
    """The delayed job cannot be kept as given; the text says why in one line."""


def submit_later(redis_url: str, task: str, payload: bytes | str, delay: float | None = None,
                 at: float | None = None, unique: str | None = None, priority: str = "normal",
                 key_prefix: str = DEFAULT_PREFIX) -> str:
    """Keep a job of TASK to be submitted in DELAY seconds or AT a Unix time;
    its job id (what `gm-ctl cancel --job` and the logs name). UNIQUE is
    what its task sees as the job's unique."""
    client = redis.Redis.from_url(redis_url)
    try:
        return keep(client, JobKeys(key_prefix), task, payload, delay, at, unique, priority)[0]
    finally:
        client.close()


def keep(client: Any, keys: JobKeys, task: str, payload: bytes | str, delay: float | None, at: float | None,
         unique: str | None, priority: str) -> tuple[str, float]:
    """Write the job: (its id, when it is due, Unix seconds on Redis's clock)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    _check(task, data, delay, at, unique, priority)
    seconds, micros = client.time()  # Redis's clock: the leader compares due times with it
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    due_ms = now_ms + round(delay * 1000) if delay is not None else round((at or 0.0) * 1000)
    if due_ms - now_ms > MAX_DELAY * 1000:
        raise BadDelayedJob(f"time {at!r} is more than {MAX_DELAY // 86400} days ahead")
    due_ms = max(due_ms, now_ms)  # a time past is due now
    chain = new_chain()
    record = {"task": task, "payload": data, "unique": unique or "", "priority": priority, "state": "delayed",
              "attempts": 0, "created": now_ms, "updated": now_ms, "due": due_ms, "runs": "[]"}
    ttl = math.ceil(max(0, due_ms - now_ms) / 1000) + KEEP_AFTER_DUE
    with client.pipeline(transaction=False) as pipe:  # in this order: see the module's text
        pipe.hset(keys.chain(chain), mapping=record)
        pipe.expire(keys.chain(chain), ttl)
        pipe.zadd(keys.due, {chain: due_ms})
        pipe.execute()
    return chain, due_ms / 1000


def _check(task: str, data: bytes, delay: float | None, at: float | None, unique: str | None,
           priority: str) -> None:
    if not task or any(c.isspace() or c == "\0" for c in task):
        raise BadDelayedJob(f"task name {task!r} is empty or has white space")
    if (delay is None) == (at is None):
        raise BadDelayedJob("give a delay in seconds or a time to run at, one of them")
    if delay is not None and not (math.isfinite(delay) and 0 <= delay <= MAX_DELAY):
        raise BadDelayedJob(f"delay {delay!r}: expected 0 to {MAX_DELAY} seconds")
    if at is not None and not (math.isfinite(at) and 0 < at < 1e11):
        raise BadDelayedJob(f"time {at!r} is not a Unix time")
    if priority not in PRIORITIES:
        raise BadDelayedJob(f"priority {priority!r}: expected one of {', '.join(PRIORITIES)}")
    if unique is not None and (not unique or len(unique.encode()) > 64 or "\0" in unique):
        raise BadDelayedJob("a unique is 1 to 64 bytes, without NUL")
    if len(data) > MAX_PAYLOAD:
        raise BadDelayedJob(f"payload of {len(data)} bytes is over the {MAX_PAYLOAD}-byte limit")
