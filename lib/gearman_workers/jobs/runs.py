"""The child's side of a task's jobs beyond one attempt (for a task with
`retries` or `keep_results`; other tasks never reach this module).

- A run the leader submitted (unique gw:ID:N) is looked up before it runs
  and marked ended before its answer (store.begin_run, end_run): a run
  that ended before is answered, not run again.
- A failure is spooled (spool.py) before the answer goes to gearmand; the
  master moves it into Redis. The client of a foreground job is told by a
  WORK_WARNING when the job runs again.
- With keep_results, the job's record (results.py) is written when it
  starts and when it ends, in batches (BATCH_AGE), on a connection whose
  replies are switched off once one write has proved that this pool may
  write: a record never costs a wait. A Redis outage drops records (one log line per
  outage) and runs the jobs anyway; a leader's run then runs unclaimed.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis

from ..config import TaskSpec
from ..control.client import shown_url
from . import policy
from .keys import JobKeys
from .results import DEAD, DONE, FAILED, RETRYING, RUNNING, record
from .spool import DEAD as BURIED
from .spool import RETRY, Failure, Spool
from .store import JobStore

log = logging.getLogger("gearman_workers.jobs")

OUTAGE_PAUSE = 1.0  # after a failed connect or write, Redis is left alone this long
TIMEOUT = 1.0       # a child waits no longer on Redis than this, per step
# Records go out in batches: when the oldest waiting is this old, when the
# child falls idle (Worker._on_idle_tick), or when a job starts of a task
# whose jobs take longer than LONG_JOB: its "running" record is then worth
# a send of its own (a fast task's jobs get a record when they end). A send
# costs more than a fast job; a batch costs one.
BATCH_AGE = 0.05
BATCH_SIZE = 100
LONG_JOB = 0.01


Record = Callable[[], bytes]  # makes a record's JSON when its batch goes (a later one of the same job replaces it)


class ChildRedis:
    """The child's own Redis connections, made on first use, after the fork:
    one for the scripts of a leader's runs (store), one for the batches of
    records, whose replies are off once the first batch proved we may write."""

    def __init__(self, url: str, keys: JobKeys) -> None:
        self.url, self.keys = url, keys
        self._store: JobStore | None = None
        self._stream: Any = None  # a redis-py Connection: its handshake (AUTH, SELECT) is redis-py's
        self._proven = False
        self._batch: dict[bytes, tuple[Record, int]] = {}  # key -> (record, seconds to keep it)
        self._batch_since = 0.0  # monotonic time of the oldest record waiting
        self._away_until = 0.0
        self._outage_logged = False

    def store(self) -> JobStore | None:
        if self._store is None and self._reachable():
            client = redis.Redis.from_url(self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
            self._store = JobStore(client, self.keys)
        return self._store

    def stage(self, key: bytes, record: Record, ttl: int, now: float) -> None:
        """SET KEY to RECORD() for TTL seconds, with its batch (BATCH_AGE)."""
        if not self._batch:
            self._batch_since = now
        self._batch[key] = (record, ttl)

    def flush_due(self, now: float) -> None:
        """Send the batch if it is old or big enough."""
        if self._batch and (now - self._batch_since >= BATCH_AGE or len(self._batch) >= BATCH_SIZE):
            self.flush()

    def flush(self) -> None:
        batch, self._batch = self._batch, {}
        if not batch or not self._reachable():
            return
        try:
            if self._stream is None:
                self._stream = redis.ConnectionPool.from_url(
                    self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT).make_connection()
                self._stream.connect()
            packed = b"".join(_set(key, record(), ttl) for key, (record, ttl) in batch.items())
            self._stream.send_packed_command([packed], check_health=False)
            if not self._proven:
                for _ in batch:
                    self._stream.read_response()  # raises the first refusal (an ACL, a full Redis)
                self._stream.send_packed_command([_command(b"CLIENT", b"REPLY", b"OFF")], check_health=False)
                self._proven = True
            self._outage_logged = False
        except (redis.RedisError, OSError) as err:
            self.lost(err)

    def lost(self, err: Exception) -> None:
        """Drop the connections; leave Redis alone for a while; say so once an outage."""
        if not self._outage_logged:
            log.warning("redis %s: %s; job records are dropped until it answers, jobs still run",
                        shown_url(self.url), err)
            self._outage_logged = True
        if self._stream is not None:
            self._stream.disconnect()
        if self._store is not None:
            self._store.client.close()
        self._stream, self._store, self._proven = None, None, False
        self._away_until = time.monotonic() + OUTAGE_PAUSE

    def _reachable(self) -> bool:
        return time.monotonic() >= self._away_until


def _set(key: bytes, value: bytes, ttl: int) -> bytes:
    """SET KEY VALUE EX TTL in Redis's protocol (RESP), written out here:
    redis-py's general packer costs more than the rest of a record."""
    ttl_text = b"%d" % ttl
    return b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nEX\r\n$%d\r\n%b\r\n" % (
        len(key), key, len(value), value, len(ttl_text), ttl_text)


def _command(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%b\r\n" % (len(word), word) for word in words)


class JobLife:
    """One task's jobs in one child; one job at a time."""

    def __init__(self, task: str, spec: TaskSpec, link: ChildRedis, spool: Spool, host: str, pool: str) -> None:
        self.task, self.spec, self.link, self.spool = task, spec, link, spool
        self.host, self.pool = host, pool
        self.run = policy.FIRST_RUN
        self.unique = self.payload = b""
        self.started = 0.0
        self.progress: tuple[int, int] | None = None
        self.keep = int(spec.keep_results)
        self.result_prefix = link.keys.result("").encode()
        self.begun = 0.0    # monotonic start of the job (keep_results)
        self.typical = 1.0  # a moving average of the task's job durations (keep_results): long until shown fast

    def begin(self, unique: bytes, payload: bytes) -> bool:
        """Before the task runs; False when this run began before (do not run it)."""
        self.run, self.unique, self.payload = policy.Run.of(unique), unique, payload
        self.started, self.progress = time.time(), None
        if self.run.chain is not None and not self._claim(self.run.chain, self.run.attempt):
            return False
        if self.keep:
            now = self.begun = time.monotonic()
            if self.typical > LONG_JOB:  # a job worth watching: say at once that it runs
                self._record(RUNNING, now)
                self.link.flush()
            else:  # a fast one: its end is its first record
                self.link.flush_due(now)
        return True

    def _claim(self, chain: str, attempt: int) -> bool:
        try:
            store = self.link.store()
            first, unique = store.begin_run(chain, attempt) if store is not None else (True, None)
        except (redis.RedisError, OSError) as err:
            self.link.lost(err)
            return True  # Redis is away: run it (see the module's text)
        if unique is not None:
            self.unique = unique
        if not first:
            log.info("run %d of job %s (task %s) ended before; not run again", attempt, chain, self.task)
        return first

    def succeeded(self, result: bytes) -> None:
        """Before the answer is sent."""
        self._record(DONE, time.monotonic(), result=result)
        self._end_run(done=True)

    def failed(self, err: BaseException | None, message: str) -> str:
        """Before the answer is sent: spool the failure; what the client is
        told besides MESSAGE ("" for nothing)."""
        self._end_run(done=False)
        now = time.monotonic()
        if not self.spec.retries:
            self._record(FAILED, now, error=message)
            return ""
        delay = policy.retry_delay(self.spec, self.run.attempt) if policy.retried(err) else None
        chain = self.run.chain or policy.new_chain()
        trace = "".join(traceback.format_exception(err)) if err is not None else message
        ended = time.time()
        self.spool.put(Failure(chain, self.run.attempt, self.task, self.unique, self.payload, self.spec.retries,
                               RETRY if delay is not None else BURIED, delay or 0.0, message, trace,
                               self.host, self.pool, self.started, ended))
        if delay is None:
            self._record(DEAD, now, error=message, chain=chain)
            return f"; no retry left: dead letter {chain} (gm-ctl dead show {chain})"
        due = time.strftime("%H:%M:%S", time.gmtime(ended + delay))
        self._record(RETRYING, now, error=message, chain=chain, retry_in=delay)
        return f"; retry {self.run.attempt} of {self.spec.retries} in {delay:.1f} s (about {due} UTC), job {chain}"

    def _end_run(self, done: bool) -> None:
        """A run the leader submitted leaves its marker before its answer
        goes: a second submission of it then does nothing (store.py)."""
        chain = self.run.chain
        if chain is None:
            return
        try:
            store = self.link.store()
            if store is not None:
                store.end_run(chain, self.run.attempt, done)
        except (redis.RedisError, OSError) as err:
            self.link.lost(err)

    def report_progress(self, numerator: int, denominator: int) -> None:
        self.progress = (numerator, denominator)
        self._record(RUNNING, time.monotonic())
        self.link.flush()

    def after_answer(self) -> None:
        """The client has its answer: the job's record goes with its batch."""
        if self.keep:
            now = time.monotonic()
            self.typical += (now - self.begun - self.typical) / 8
            self.link.flush_due(now)

    def _record(self, state: str, now: float, **fields: Any) -> None:
        """Stage the job's record; it is made (JSON) only if its batch goes
        before a later record of the same job replaces it."""
        if self.keep and self.unique and not self.unique.startswith(b"gw:"):
            made = (self.task, state, self.run.attempt, self.started, self.host, self.pool, self.progress)
            self.link.stage(self.result_prefix + self.unique, lambda: json.dumps(record(*made, **fields)).encode(),
                            self.keep, now)
