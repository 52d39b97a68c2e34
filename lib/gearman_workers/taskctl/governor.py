"""The master's governor: one thread per pool that holds the fleet-wide
concurrency tokens and start permits (tokens.py) for the children serving
a limited task, and tells the master whose rows changed (steering.py).

A child offers a limited task only while it holds a token: its row starts
with NO_TOKEN, the governor takes a token for it when one is free and
clears the reason; the child then sends CAN_DO. A child keeps its token
while it lives and stays (it is not given back between jobs: that would
cost a Redis call per job). A child that leaves, or in whose pool the task
is paused, gives it back at the next tick once it runs no job of the task
(a paused pool's tokens go to the pools that still serve it); a dead
child's at the next tick; a token no master renews lapses within
TOKEN_TTL_MS. A paused task gets no start permits either.

A task with a rate: the governor reserves a start permit for each child
that has none, and grants it at its time; the child spends it on its next
job of the task (switchboard.py). At most one permit waits unused per
child, so a burst after a quiet spell is at most one job per child.

While Redis is away the pool keeps at most its share of each limit
(tokens.share): the children beyond it withhold the task until Redis
answers again; permits come at its share of the rate, on its own clock
(tokens.LocalPermits). Logged once per outage.

Like the job keeper, it talks to Redis holding the master's fork lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .. import inherited
from ..commands import Command, OffersChanged
from ..config import Config
from ..control.client import connect, redis_peers, shown_url
from ..sessions import keep_session
from .steering import Steering
from .tokens import LocalPermits, TaskKeys, Tokens, share

log = logging.getLogger("gearman_workers.taskctl")

TICK = 0.1            # how often tokens are sought for children that wait
METER_TICK = 0.05     # how often children's spent permits are looked for (a task with a rate)
RENEW_INTERVAL = 1.0  # how often held tokens are renewed (TOKEN_TTL_MS is five times that)
IDLE_CHECK = 1.0      # how often a governor without limited tasks looks whether a reload brought some


class Master(Protocol):
    fork_lock: threading.Lock

    def submit(self, command: Command) -> None: ...
    def busy_task(self, slot: int) -> str | None: ...


class Governor:
    def __init__(self, config: Config, steering: Steering) -> None:
        assert config.redis_url is not None
        self.url, self.steering = config.redis_url, steering
        self.keys = TaskKeys(config.key_prefix)
        self.pool = f"{config.hostname}/{config.name}"
        self.members: dict[str, dict[int, str]] = {}  # task -> slot -> the token member its child holds
        self.fleet: dict[str, list[str]] = {}  # task -> the pools last seen serving it
        self.due: dict[str, dict[int, float]] = {}  # task -> slot -> when its reserved permit is granted
        self.local = LocalPermits(self.fleet)
        self._submit: Callable[[Command], None] = lambda command: None
        self._busy_task: Callable[[int], str | None] = lambda slot: None
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._outage_since: float | None = None
        self._peers: frozenset[inherited.Peer] = frozenset()

    def start(self, master: Master) -> None:
        self._guard, self._submit, self._busy_task = master.fork_lock, master.submit, master.busy_task
        self._peers = redis_peers(self.url)
        self._stop = stop = threading.Event()
        threading.Thread(target=self._run, args=(stop,), name="governor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def forget_in_child(self) -> None:
        inherited.blank_sockets_to(self._peers)

    def _run(self, stop: threading.Event) -> None:
        keep_session(stop, lambda: self._session(stop), self._outage, lambda seconds: self._offline(stop, seconds),
                     self._guard, log, "governor")

    def _session(self, stop: threading.Event) -> None:
        if not self.steering.governed():  # no Redis connection until a task has a limit
            stop.wait(IDLE_CHECK)
            return
        client = connect(self.url)
        try:
            client.ping()  # connect outside the fork lock
            tokens = Tokens(client, self.keys)
            next_renewal = 0.0
            while not stop.is_set() and self.steering.governed():
                renew = time.monotonic() >= next_renewal
                with self._guard:
                    waiting = self._hold_all(tokens, renew)
                    metering = self._meter_all(tokens)
                if renew:
                    next_renewal = time.monotonic() + RENEW_INTERVAL
                self._back()
                stop.wait(min(TICK if waiting else TICK * 5, next_renewal - time.monotonic(), metering))
            with self._guard:
                self._give_back(tokens)
        finally:
            client.close()

    def _hold_all(self, tokens: Tokens, renew: bool) -> bool:
        """Renew what is held, seek tokens for children that wait: whether any still waits."""
        waiting = False
        for task, limit in self.steering.limited.items():
            held = self.members.get(task, {})
            # A child that leaves, or for which the task is paused, takes no token, and gives its own
            # back once no job of the task runs in it.
            members = {slot: f"{self.pool}/{pid}" for slot, (pid, stays) in self.steering.wanting(task).items()
                       if stays or (slot in held and self._busy_task(slot) == task)}
            if not renew and members.items() <= held.items() and len(members) == len(held):
                continue  # nobody new waits, nobody left
            tokens.release(task, [member for slot, member in held.items() if members.get(slot) != member])
            order = sorted(members, key=lambda slot: members[slot] not in held.values())  # renew before taking
            holding, self.fleet[task] = tokens.hold(task, limit, self.pool, [members[s] for s in order])
            self.members[task] = {slot: member for slot, member in members.items() if member in holding}
            self._grant(task, set(self.members[task]))
            waiting = waiting or len(holding) < len(members)
        return waiting

    def _meter_all(self, permits: Tokens | LocalPermits) -> float:
        """Reserve permits for the children that have none, grant those due:
        seconds until the next look."""
        wait = float("inf")
        for task, per_second in self.steering.rated.items():
            wait = min(wait, METER_TICK, self._meter(permits, task, per_second))
        return wait

    def _meter(self, permits: Tokens | LocalPermits, task: str, per_second: float) -> float:
        now = time.monotonic()
        serving = {slot for slot, (_, stays) in self.steering.wanting(task).items() if stays}
        due = {slot: at for slot, at in self.due.get(task, {}).items() if slot in serving}
        needy = [slot for slot in sorted(serving) if slot not in due and self.steering.needs_permit(slot, task)]
        if needy:
            waits, self.fleet[task] = permits.reserve(task, per_second, len(needy), self.pool)
            due.update({slot: now + wait for slot, wait in zip(needy, waits, strict=True)})
        granted = [slot for slot, at in due.items() if at <= now]
        for slot in granted:
            self.steering.grant_permit(slot, task)
            del due[slot]
        if granted:
            self._submit(OffersChanged(tuple(granted)))
        self.due[task] = due
        return min(due.values(), default=now + METER_TICK) - now

    def _offline(self, stop: threading.Event, seconds: float) -> None:
        """Redis is away for SECONDS more at least: permits at this pool's share of each rate."""
        until = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < until:
            with self._guard:
                wait = self._meter_all(self.local)
            stop.wait(max(0.0, min(wait, until - time.monotonic())))

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
                            "pool's share of its concurrency and rate: %s", shown_url(self.url), err, self._shares())
            for task, limit in self.steering.limited.items():
                keep = share(limit, self.fleet.get(task, []), self.pool)
                held = self.members.get(task, {})
                self.members[task] = {slot: held[slot] for slot in sorted(held)[:keep]}
                self._grant(task, set(self.members[task]))

    def _shares(self) -> str:
        limits = [f"{task} {share(limit, self.fleet.get(task, []), self.pool)} of {limit}"
                  for task, limit in sorted(self.steering.limited.items())]
        rates = [f"{task} {per_second / max(1, len(self.fleet.get(task, []))):g}/s of {per_second:g}/s"
                 for task, per_second in sorted(self.steering.rated.items())]
        return ", ".join(limits + rates) or "none"

    def _back(self) -> None:
        if self._outage_since is not None:
            with self._guard:
                log.info("governor: redis works again after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None
