"""The master's governor: one thread per pool that holds the fleet-wide
concurrency tokens (tokens.py) for the children serving a limited task,
and tells the master whose rows changed (steering.py).

A child offers a limited task only while it holds a token: its row starts
with NO_TOKEN, the governor takes a token for it when one is free and
clears the reason; the child then sends CAN_DO. A child keeps its token
while it lives and stays (it is not given back between jobs: that would
cost a Redis call per job); a child that leaves or dies gives it back at
the next tick, and a token no master renews lapses within TOKEN_TTL_MS.

While Redis is away the pool keeps at most its share of each limit
(tokens.share): the children beyond it withhold the task until Redis
answers again. Logged once per outage.

Like the job keeper, it talks to Redis holding the master's fork lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from .. import inherited
from ..backoff import Backoff
from ..commands import Command, OffersChanged
from ..config import Config
from ..control.client import connect, redis_peers, shown_url
from .steering import Steering
from .tokens import TaskKeys, Tokens, share

log = logging.getLogger("gearman_workers.taskctl")

TICK = 0.1            # how often tokens are sought for children that wait
RENEW_INTERVAL = 1.0  # how often held tokens are renewed (TOKEN_TTL_MS is five times that)


class Master(Protocol):
    fork_lock: threading.Lock

    def submit(self, command: Command) -> None: ...


class Governor:
    def __init__(self, config: Config, steering: Steering) -> None:
        assert config.redis_url is not None
        self.url, self.steering = config.redis_url, steering
        self.keys = TaskKeys(config.key_prefix)
        self.pool = f"{config.hostname}/{config.name}"
        self.members: dict[str, dict[int, str]] = {}  # task -> slot -> the token member its child holds
        self.fleet: dict[str, list[str]] = {}  # task -> the pools last seen serving it
        self._submit: Callable[[Command], None] = lambda command: None
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._outage_since: float | None = None
        self._peers: frozenset[inherited.Peer] = frozenset()

    def start(self, master: Master) -> None:
        self._guard, self._submit = master.fork_lock, master.submit
        self._peers = redis_peers(self.url)
        self._stop = stop = threading.Event()
        threading.Thread(target=self._run, args=(stop,), name="governor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def forget_in_child(self) -> None:
        inherited.blank_sockets_to(self._peers)

    def _run(self, stop: threading.Event) -> None:
        backoff = Backoff(0.1, 5.0)
        while not stop.is_set():
            try:
                self._session(stop)
            except (redis.RedisError, OSError) as err:
                self._outage(err)
                stop.wait(backoff.next())
            except Exception:
                with self._guard:
                    log.exception("governor failed; restarting it")
                stop.wait(1.0)
            else:
                backoff.reset()

    def _session(self, stop: threading.Event) -> None:
        client = connect(self.url)
        try:
            client.ping()  # connect outside the fork lock
            tokens = Tokens(client, self.keys)
            next_renewal = 0.0
            while not stop.is_set():
                renew = time.monotonic() >= next_renewal
                with self._guard:
                    waiting = self._hold_all(tokens, renew)
                if renew:
                    next_renewal = time.monotonic() + RENEW_INTERVAL
                self._back()
                stop.wait(TICK if waiting else min(TICK * 5, next_renewal - time.monotonic()))
            with self._guard:
                self._give_back(tokens)
        finally:
            client.close()

    def _hold_all(self, tokens: Tokens, renew: bool) -> bool:
        """Renew what is held, seek tokens for children that wait: whether any still waits."""
        waiting = False
        for task, limit in self.steering.limited.items():
            held = self.members.get(task, {})
            # A leaving child keeps its token until it is gone (its last job may run), and takes none.
            members = {slot: f"{self.pool}/{pid}" for slot, (pid, leaving) in self.steering.wanting(task).items()
                       if not leaving or slot in held}
            if not renew and members.items() <= held.items() and len(members) == len(held):
                continue  # nobody new waits, nobody left
            tokens.release(task, [member for slot, member in held.items() if members.get(slot) != member])
            order = sorted(members, key=lambda slot: members[slot] not in held.values())  # renew before taking
            holding, self.fleet[task] = tokens.hold(task, limit, self.pool, [members[s] for s in order])
            self.members[task] = {slot: member for slot, member in members.items() if member in holding}
            self._grant(task, set(self.members[task]))
            waiting = waiting or len(holding) < len(members)
        return waiting

    def _grant(self, task: str, granted: set[int]) -> None:
        changed = self.steering.grant(task, granted)
        if changed:
            self._submit(OffersChanged(tuple(changed)))

    def _give_back(self, tokens: Tokens) -> None:
        """The pool stops: its tokens are free at once, not when they lapse."""
        for task, held in self.members.items():
            tokens.release(task, list(held.values()))
        self.members.clear()

    def _outage(self, err: Exception) -> None:
        with self._guard:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("redis %s unreachable for the governor (%s); each limited task keeps at most this "
                            "pool's share of its concurrency: %s", shown_url(self.url), err, self._shares())
            for task, limit in self.steering.limited.items():
                keep = share(limit, self.fleet.get(task, []), self.pool)
                held = self.members.get(task, {})
                self.members[task] = {slot: held[slot] for slot in sorted(held)[:keep]}
                self._grant(task, set(self.members[task]))

    def _shares(self) -> str:
        return ", ".join(f"{task} {share(limit, self.fleet.get(task, []), self.pool)} of {limit}"
                         for task, limit in sorted(self.steering.limited.items())) or "none limited"

    def _back(self) -> None:
        if self._outage_since is not None:
            with self._guard:
                log.info("governor: redis works again after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None
