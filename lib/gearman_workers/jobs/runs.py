"""The child's side of a task's jobs beyond one attempt (for a task with
`retries` or `keep_results`; other tasks never reach this module).

- A run the leader submitted (unique gw:ID:N) is looked up before it runs
  and marked ended before its answer (store.begin_run, end_run): a run
  that ended before is answered, not run again.
- A failure is spooled (spool.py) before the answer goes to gearmand; the
  master moves it into Redis. The client of a foreground job is told by a
  WORK_WARNING when the job runs again.
- With keep_results, the job's record (results.py) goes out in batches
  after the answer (batch.py): at its start too for a task whose jobs are
  long, at its end only for a fast one. A Redis outage drops records (one
  log line per outage) and runs the jobs anyway; a leader's run that
  cannot be looked up then runs.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import redis

from ..config import TaskSpec
from ..control.client import shown_url
from ..taskctl.cancelled import JobCancelled
from . import policy
from .batch import TIMEOUT, RecordBatch
from .keys import JobKeys
from .results import CANCELLED, DEAD, DONE, FAILED, RETRYING, RUNNING, fixed_fields, record
from .spool import Failure, Spool
from .store import JobStore

log = logging.getLogger("gearman_workers.jobs")

OUTAGE_PAUSE = 1.0  # after a failed connect or write, Redis is left alone this long
LONG_JOB = 0.01     # a job of a task whose jobs take longer says at once that it runs (batch.py)


class ChildRedis:
    """The child's Redis, reached on first use, after the fork: the scripts
    of a leader's runs (store) and the batches of records (records), with
    one outage between them: after a failure both leave Redis alone for
    OUTAGE_PAUSE, and the outage is logged once."""

    def __init__(self, url: str, keys: JobKeys) -> None:
        self.url, self.keys = url, keys
        self.records = RecordBatch(url, self)
        self._store: JobStore | None = None
        self._away_until = 0.0
        self._outage_logged = False

    def store(self) -> JobStore | None:
        if self._store is None and self.reachable():
            client = redis.Redis.from_url(self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
            self._store = JobStore(client, self.keys)
        return self._store

    def reachable(self) -> bool:
        return time.monotonic() >= self._away_until

    def answered(self) -> None:
        self._outage_logged = False

    def lost(self, err: Exception) -> None:
        """Drop the connections; leave Redis alone for a while; say so once an outage."""
        if not self._outage_logged:
            log.warning("redis %s: %s; job records are dropped until it answers, jobs still run",
                        shown_url(self.url), err)
            self._outage_logged = True
        self.records.disconnect()
        if self._store is not None:
            self._store.client.close()
        self._store = None
        self._away_until = time.monotonic() + OUTAGE_PAUSE


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
        self.fixed = fixed_fields(task, host, pool)
        self.begun = 0.0    # monotonic start of the job (keep_results)
        self.key: bytes | None = None  # the job's record's key; None: no record (keep_results off, no unique)
        self.typical = 1.0  # a moving average of the task's job durations (keep_results): long until shown fast

    def begin(self, unique: bytes, payload: bytes) -> bool:
        """Before the task runs; False when this run began before (do not run it)."""
        self.unique, self.payload, self.progress, self.started = unique, payload, None, time.time()
        self.run = run = policy.Run.of(unique) if unique[:3] == b"gw:" else policy.FIRST_RUN
        if run.chain is not None and not self._claim(run.chain, run.attempt):
            return False
        if self.keep:
            self.begun = now = time.monotonic()
            # A delayed job given no unique of its own (gw:ID:N) leaves no record.
            unique = self.unique
            self.key = self.result_prefix + unique if unique and unique[:3] != b"gw:" else None
            if self.typical > LONG_JOB:  # a job worth watching: say at once that it runs
                self._record(RUNNING, now)
                self.link.records.flush()
            # a fast one: its end is its first record, and after_answer sends the batch when due
        return True

    def _claim(self, chain: str, attempt: int) -> bool:
        try:
            store = self.link.store()
            first, unique = store.begin_run(chain, attempt) if store is not None else (True, None)
        except (redis.RedisError, OSError) as err:
            self.link.lost(err)
            return True  # Redis is away: run it (see the module's text)
        if unique:  # a delayed job given no unique of its own keeps gw:ID:N
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
        told besides MESSAGE ("" for nothing). A cancelled job ends here."""
        now = time.monotonic()
        if isinstance(err, JobCancelled):
            self._end_run(done=True)
            self._record(CANCELLED, now, error=message)
            return ""
        self._end_run(done=False)
        if not self.spec.retries:
            self._record(FAILED, now, error=message)
            return ""
        delay = policy.retry_delay(self.spec, self.run.attempt) if policy.retried(err) else None
        chain = self.run.chain or policy.new_chain()
        trace = "".join(traceback.format_exception(err)) if err is not None else message
        ended = time.time()
        self.spool.put(Failure(chain, self.run.attempt, self.task, self.unique, self.payload, self.spec.retries,
                               RETRYING if delay is not None else DEAD, delay or 0.0, message, trace,
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
        self.link.records.flush()

    def after_answer(self) -> None:
        """The client has its answer: the job's record goes with its batch."""
        if self.keep:
            now = time.monotonic()
            self.typical += (now - self.begun - self.typical) / 8
            records = self.link.records
            if now >= records.due_at:  # a comparison, not a call: this is every job's path
                records.flush()

    def _record(self, state: str, now: float, result: bytes | None = None, **fields: Any) -> None:
        """Stage the job's record; its JSON is made only if its batch goes
        before a later record of the same job replaces it."""
        if self.key is not None:
            ended = None if state == RUNNING else time.time()
            self.link.records.stage(self.key, record, (self.fixed, state, self.run.attempt, self.started, ended,
                                                       self.progress, result, fields), self.keep, now)
