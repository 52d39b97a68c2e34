"""The master's job keeper: one thread per pool under fleet control that
- moves the failures its children spooled into Redis (spool.py, store.py),
- holds or seeks the fleet's leader lease, and
- as the leader, submits the due runs to gearmand, retries and delayed
  jobs alike (store.py says how each is submitted exactly once), and
  fires the periodic schedules (periodic/firing.py).

One leader in the whole fleet: a master takes the lease (LEASE_MS) when it
is free and renews it every RENEW_INTERVAL; a dead leader's lease lapses and
the next master to try takes it, within LEASE_MS + RENEW_INTERVAL. The
lease is checked in the same script as every claim, so a leader that stalled
past its lease claims nothing when it wakes.

Like the control listener, it talks to Redis holding the master's fork lock
(a child must not inherit redis-py's locks mid-command) and waits without it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Protocol

import redis

from .. import inherited
from ..config import Config
from ..control.client import connect, redis_peers, shown_url
from ..periodic.firing import Scheduler
from ..periodic.records import Records
from ..sessions import keep_session
from .keys import JobKeys
from .policy import Run
from .spool import Spool, spool_dir
from .store import MOVING_MS, JobStore
from .submit import SubmitFailed, Submitter

log = logging.getLogger("gearman_workers.jobs")

TICK = 0.1             # how often the spool is looked at
CLAIM_PATIENCE = 0.5   # the longest a leader goes without looking for due runs (another pool's new ones)
RENEW_INTERVAL = 1.0
LEASE_MS = 3000
CLAIM_BATCH = 100
SUBMIT_TIMEOUT = 5.0
OUTAGE_RETRY = 2.0     # the longest wait between two tries to reach Redis: the schedules go on soon after it is back


class Master(Protocol):
    fork_lock: threading.Lock


class JobKeeper:
    def __init__(self, config: Config) -> None:
        assert config.redis_url is not None
        self.url, self.servers = config.redis_url, config.servers
        self.own_tasks = dict.fromkeys((name for name, spec in config.tasks.items() if spec.retries), 0)
        self.keeps_jobs = any(spec.lifecycle for spec in config.tasks.values())  # else it only leads
        self.keys = JobKeys(config.key_prefix)
        self.spool = Spool(spool_dir(config))
        self.token = f"{config.hostname}/{config.name}/{os.getpid()}/{secrets.token_hex(4)}"
        self.leading = False
        self.dead_jobs: dict[str, int] | None = None  # read at each renewal: the metric's value
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self.scheduler = Scheduler(config.schedules, f"{config.hostname}/{config.name}", self._guard)
        self._outage_since: float | None = None
        self._peers: frozenset[inherited.Peer] = frozenset()

    def start(self, master: Master) -> None:
        self._guard = self.scheduler.guard = master.fork_lock
        self._peers = redis_peers(self.url) | frozenset().union(
            *(inherited.peers_of(s.host, s.port, None) for s in self.servers))
        self.spool.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._stop = stop = threading.Event()
        threading.Thread(target=self._run, args=(stop,), name="jobs", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def forget_in_child(self) -> None:
        """After fork: the thread's sockets (Redis, gearmand) are the master's."""
        inherited.blank_sockets_to(self._peers)

    # --- the thread -----------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        submitter = Submitter(self.servers, SUBMIT_TIMEOUT)
        keep_session(stop, lambda: self._session(stop, submitter), self._outage, stop.wait, self._guard, log,
                     "job keeper", OUTAGE_RETRY)
        submitter.close()

    def _session(self, stop: threading.Event, submitter: Submitter) -> None:
        client = connect(self.url)
        try:
            client.ping()  # connect outside the fork lock: a connect may wait seconds
            store, records = JobStore(client, self.keys), Records(client, self.keys)
            next_renewal = next_claim = 0.0
            while not stop.wait(TICK):
                with self._guard:
                    moved = self._move_spool(store)
                    if time.monotonic() >= next_renewal:
                        self._renew(store)
                        self.scheduler.renew(records, self.leading, self.token)
                        next_renewal = time.monotonic() + RENEW_INTERVAL
                if self.leading and (moved or time.monotonic() >= next_claim):
                    wait = self._submit_due(store, submitter)
                    next_claim = time.monotonic() + (CLAIM_PATIENCE if wait is None else min(CLAIM_PATIENCE, wait))
                if self.leading:
                    self.scheduler.fire_due(records, submitter, self.token)
                self._back()
            with self._guard:
                if self.leading:
                    store.release_lease(self.token)
                    self.leading = False
                    self.scheduler.stand_down()
        finally:
            client.close()

    def _move_spool(self, store: JobStore) -> bool:
        """Move what the children spooled into Redis; whether there was any."""
        pending = self.spool.pending()
        for path in pending:
            failure = self.spool.load(path)
            if failure is not None:
                store.record_failure(failure)  # a run already kept is not kept twice
                path.unlink(missing_ok=True)
        return bool(pending)

    def _renew(self, store: JobStore) -> None:
        if self.keeps_jobs:
            self.dead_jobs = self.own_tasks | store.dead_counts()  # ours at 0 until one dies
        leading = store.hold_lease(self.token, LEASE_MS)
        if leading != self.leading:
            log.info("this pool %s the jobs leader", "is now" if leading else "is no longer")
            self.leading = leading

    def _submit_due(self, store: JobStore, submitter: Submitter) -> float | None:
        """Submit what is due; the seconds until more is (None: nothing waits)."""
        with self._guard:
            found = store.claim_due(self.token, CLAIM_BATCH)
        if found is None:
            with self._guard:
                log.info("this pool is no longer the jobs leader (its lease lapsed)")
                self.leading = False
            return None
        claimed, wait = found
        for chain, task, payload, attempt, priority in claimed:
            try:
                submitter.submit(task, Run(chain, attempt).unique(), payload, priority)
            except SubmitFailed as err:
                with self._guard:
                    log.warning("run %d of job %s (task %s) not submitted (%s); tried again in %d s",
                                attempt, chain, task, err, MOVING_MS // 1000)
                continue
            with self._guard:
                store.settle(chain)
        return 0.0 if len(claimed) == CLAIM_BATCH else wait  # a full batch: more may be due now

    def _outage(self, err: Exception) -> None:
        self.leading = False
        with self._guard:
            self.scheduler.stand_down()
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            refused = isinstance(err, redis.ResponseError)  # reachable, but says no (an ACL, a full Redis)
            with self._guard:
                log.warning("redis %s %s the job keeper (%s); failures wait in %s", shown_url(self.url),
                            "refuses" if refused else "unreachable for", err, self.spool.directory)

    def _back(self) -> None:
        if self._outage_since is not None:
            with self._guard:
                log.info("job keeper: redis works again after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None
