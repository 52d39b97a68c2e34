"""A job's record in Redis, for a task with `keep_results`: what the child
writes (runs.py) and what `gm-ctl job` and clients read.

PREFIX:jobs:result:UNIQUE holds JSON, kept `keep_results` seconds after its
last write:

    {"unique", "task", "state": running | done | failed | retrying | dead,
     "attempt": runs so far, "started", "ended" (Unix seconds), "host", "pool",
     "progress": [numerator, denominator] (the last send_job_status) or null,
     "result": base64 (done, up to MAX_RESULT bytes) | "result_size" (above it),
     "error" (failed, retrying, dead), "chain" and "retry_in" (retrying, dead)}

A client reads it with::

    from gearman_workers.results import read
    record = read("redis://localhost:6379/0", "my-unique")   # None: no record
    record["state"], record.get("result")                     # result as bytes
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import redis

from .keys import JobKeys

RUNNING, DONE, FAILED, RETRYING, DEAD, CANCELLED = "running", "done", "failed", "retrying", "dead", "cancelled"
MAX_RESULT = 1 << 20
DEFAULT_PREFIX = "gearman-workers"


def fixed_fields(task: str, host: str, pool: str) -> bytes:
    """The start of every record of TASK's jobs in one child (record's FIXED)."""
    return b"{" + json.dumps({"task": task, "host": host, "pool": pool})[1:-1].encode() + b","


def record(fixed: bytes, state: str, attempt: int, started: float, ended: float | None,
           progress: tuple[int, int] | None, result: bytes | None = None, fields: dict[str, Any] | None = None,
           ) -> bytes:
    """The record as the child writes it: JSON, formatted here (every job of
    a task with keep_results makes one, and json.dumps of the same dict
    costs three times as much); FIELDS (errors, names) go through json.
    STARTED and ENDED (None: still running) are Unix seconds."""
    shown = b"null" if progress is None else b"[%d,%d]" % progress
    end = b"" if ended is None else b',"ended":%.6f' % ended
    if result is None:
        answer = b""
    elif len(result) <= MAX_RESULT:
        answer = b',"result":"%s"' % binascii.b2a_base64(result, newline=False)
    else:
        answer = b',"result_size":%d' % len(result)
    more = b"," + json.dumps(fields)[1:-1].encode() if fields else b""
    return b'%s"state":"%s","attempt":%d,"started":%.6f,"progress":%s%s%s%s}' % (
        fixed, state.encode(), attempt, started, shown, end, answer, more)


def read_record(client: redis.Redis, keys: JobKeys, unique: str) -> dict[str, Any] | None:
    """UNIQUE's record, its result decoded to bytes; None when there is none."""
    raw = client.get(keys.result(unique))
    if raw is None:
        return None
    found: dict[str, Any] = json.loads(raw)
    found["unique"] = unique
    if "result" in found:
        found["result"] = base64.b64decode(found["result"])
    return found


def read(redis_url: str, unique: str, key_prefix: str = DEFAULT_PREFIX) -> dict[str, Any] | None:
    """The record of the job with UNIQUE (see the module's text), or None."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        return read_record(client, JobKeys(key_prefix), unique)
    finally:
        client.close()
