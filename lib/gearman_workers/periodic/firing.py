"""The keeper's part in the schedules, run on its thread (jobs/keeper.py):

- each renewal, a pool with schedules publishes them and reads what the
  fleet claimed (records.py); one whose definition of a schedule differs
  from the one the leader fires says so in its log, once per difference;
- the leader chooses what is fired: its own definitions, and for a schedule
  it has not, the one most live pools publish (so a pool without schedules
  can lead too); then, each tick, it fires the slots that came due.

Missed and late: the newest slot that came due is fired if it is at most
GRACE late (a leader's takeover takes a few seconds). Older slots that no
leader fired, and a newest one later than GRACE, are missed: logged, and
with catch_up = "once" the newest of them runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from typing import Protocol

from ..jobs.submit import SubmitFailed
from .records import Records, Synced
from .spec import Schedule, from_definition

log = logging.getLogger("gearman_workers.schedules")

GRACE = 10.0            # seconds: a slot this late is fired late, not missed
STALE_MS = 10_000       # a pool that has not published for this long no longer counts
RESEND_INTERVAL = 1.0   # how often a slot gearmand did not take is offered again
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Submitting(Protocol):
    def submit(self, task: str, unique: bytes, payload: bytes, priority: str = "normal") -> bytes: ...


@dataclasses.dataclass
class Lag:
    """Fire time minus slot time of the slots this pool fired (a histogram)."""

    bounds: tuple[float, ...] = LAG_BUCKETS
    counts: list[int] = dataclasses.field(default_factory=lambda: [0] * len(LAG_BUCKETS))  # cumulative
    total: float = 0.0
    observed: int = 0

    def observe(self, seconds: float) -> None:
        self.observed += 1
        self.total += seconds
        for index, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[index] += 1


class Scheduler:
    def __init__(self, schedules: dict[str, Schedule], pool: str, guard: threading.Lock) -> None:
        self.own, self.pool, self.guard = schedules, pool, guard
        self.fired = dict.fromkeys(schedules, 0)  # slots this pool fired, per schedule (a metric)
        self.lag = Lag()
        self.fleet: dict[str, Schedule] = {}      # what this pool fires while it leads
        self.floors: dict[str, int] = {}          # the newest slot claimed of each, as far as we know
        self.due: dict[str, int] = {}             # the next slot of each fleet schedule
        self.unsent: dict[str, int] = {}          # claimed, but no gearmand took it yet
        self.offset = 0.0                         # Redis's clock minus ours
        self._resend_at = 0.0
        self._told: set[tuple[str, str]] = set()

    def renew(self, records: Records, leading: bool, token: str) -> None:
        """Each renewal: publish ours, learn the floors; lead or follow (a
        pool without schedules has nothing to do while it does not lead)."""
        if not (leading or self.own or self.fleet):  # (the caller holds the guard, as for stand_down)
            return
        own = {name: schedule.definition() for name, schedule in self.own.items()} if self.own else None
        synced = records.sync(self.pool, own, STALE_MS, leading)
        self.offset = synced.now - time.time()
        for name, slot in synced.last.items():
            self.floors[name] = max(self.floors.get(name, slot), slot)
        if leading:
            self._lead(records, synced, token)
        else:
            self._follow(synced)

    def stand_down(self) -> None:
        """No longer the leader: what was not sent stays with the records."""
        for name, slot in self.unsent.items():
            log.warning("schedule %s: the slot at %s was claimed but no gearmand took it before this pool "
                        "stopped leading; it is not submitted", name, _shown(slot))
        self.fleet, self.due, self.unsent = {}, {}, {}

    # --- following ----------------------------------------------------------

    def _follow(self, synced: Synced) -> None:
        if self.fleet:
            self.stand_down()
        for name, mine in self.own.items():
            fired = synced.fleet.get(name)
            if fired is None or fired.get("digest") == mine.digest or (name, fired["digest"]) in self._told:
                continue
            self._told.add((name, fired["digest"]))
            log.warning("schedule %s: this pool's (%s, task %s, digest %s) differs from the one the leader fires "
                        "(%s, from %s, digest %s); the leader's is fired, not this one", name, mine.describe(),
                        mine.task, mine.digest, _described(name, fired), fired.get("from"), fired["digest"])

    # --- leading ------------------------------------------------------------

    def _lead(self, records: Records, synced: Synced, token: str) -> None:
        chosen, sources = self._choose(synced.published)
        kept = {name: definition.get("digest") for name, definition in synced.fleet.items()}
        if chosen == self.fleet and kept == {name: schedule.digest for name, schedule in chosen.items()}:
            return  # (Redis that lost its records is told again)
        adopted = {name: schedule.definition() | {"digest": schedule.digest, "from": sources[name]}
                   for name, schedule in chosen.items()}
        if not records.adopt(token, adopted):
            return  # the lease lapsed meanwhile: the keeper finds out at its next renewal
        now = synced.now
        for name, schedule in chosen.items():
            if self.fleet.get(name) != schedule:
                self._begin(name, schedule, synced, now)
        self.fleet = chosen
        self.due = {name: self.due[name] for name in chosen}

    def _choose(self, published: dict[str, dict[str, dict]]) -> tuple[dict[str, Schedule], dict[str, str]]:
        """Name -> the definition fired, and the pool it is from."""
        votes: dict[str, dict[str, tuple[Schedule, list[str]]]] = {}
        for pool, schedules in published.items():
            for name, definition in schedules.items():
                try:
                    schedule = from_definition(name, definition)
                except ValueError:
                    continue  # a newer pool's definition this one cannot read: it is not ours to fire
                votes.setdefault(name, {}).setdefault(schedule.digest, (schedule, []))[1].append(pool)
        chosen, sources = dict(self.own), dict.fromkeys(self.own, self.pool)
        for name, kinds in votes.items():
            if name not in chosen:
                schedule, pools = max(kinds.values(), key=lambda kind: (len(kind[1]), kind[0].digest))
                chosen[name], sources[name] = schedule, sorted(pools)[0]
        return chosen, sources

    def _begin(self, name: str, schedule: Schedule, synced: Synced, now: float) -> None:
        if name not in synced.last:  # nothing to go by: never fire a slot that may have been fired
            self.floors[name] = max(self.floors.get(name, 0), schedule.latest(now))
            log.info("schedule %s (%s, task %s): no slot of it was claimed before (a new schedule, or Redis lost "
                     "its records); the first fired is the one at %s", name, schedule.describe(), schedule.task,
                     _shown(schedule.after(self.floors[name])))
        record = synced.fired.get(name)
        if record is not None and not record.get("submitted") and name not in self.unsent:
            log.warning("schedule %s: the slot at %s was claimed by %s, which stopped leading before gearmand "
                        "took it; it is not submitted again (gearmand most likely has it)", name,
                        _shown(int(record["slot"])), record.get("by"))
        self.due[name] = schedule.after(max(self.floors[name], schedule.latest(now) - 1))

    def fire_due(self, records: Records, submitter: Submitting, token: str) -> float | None:
        """Fire what came due; the seconds until the next slot (None: no
        schedule, or the lease is lost). Called without the guard: it holds
        it for Redis and the log, never while gearmand answers."""
        now = time.time() + self.offset
        if self.unsent and time.monotonic() >= self._resend_at:
            self._resend(records, submitter)
        for name, schedule in self.fleet.items():
            if now >= self.due[name] and not self._fire(records, submitter, token, name, schedule, now):
                with self.guard:
                    self.stand_down()  # the lease lapsed: the keeper says so at its next renewal
                return None
        return min((due - now for due in self.due.values()), default=None)

    def _fire(self, records: Records, submitter: Submitting, token: str, name: str, schedule: Schedule,
              now: float) -> bool:
        """Fire NAME's due slot (and a missed one, if it catches up); False when the lease is lost."""
        current, floor = schedule.latest(now), self.floors[name]
        self.due[name] = schedule.after(current)
        if current <= floor:
            return True
        on_time = now - current <= GRACE
        older, count = schedule.between(floor, current, 1)
        missed = [current] if not on_time else older
        count += 0 if on_time else 1
        wanted = ([missed[-1]] if missed and schedule.catch_up == "once" else []) + ([current] if on_time else [])
        if count:
            with self.guard:
                self._tell_missed(name, schedule, floor, missed[-1], count)
        return all(self._claim(records, submitter, token, name, schedule, slot, now) for slot in wanted)

    def _claim(self, records: Records, submitter: Submitting, token: str, name: str, schedule: Schedule,
               slot: int, now: float) -> bool:
        with self.guard:
            claimed = records.claim(token, name, slot, self.floors[name], self.pool)
        if claimed < 0:
            return False
        self.floors[name] = max(self.floors[name], slot)
        if claimed:
            self.fired[name] = self.fired.get(name, 0) + 1
            self.lag.observe(max(0.0, now - slot))
            self._send(records, submitter, name, schedule, slot)
        return True

    def _send(self, records: Records, submitter: Submitting, name: str, schedule: Schedule, slot: int) -> None:
        try:
            submitter.submit(schedule.task, schedule.unique(slot).encode(), schedule.payload.encode(),
                             schedule.priority)
        except SubmitFailed as err:
            with self.guard:
                self._unsent(name, slot, err)
            return
        with self.guard:
            if self.unsent.pop(name, None) is not None:
                log.info("schedule %s: the slot at %s is submitted", name, _shown(slot))
            records.submitted(name, slot)

    def _unsent(self, name: str, slot: int, err: Exception) -> None:
        replaced = self.unsent.get(name)
        if replaced is None:
            log.warning("schedule %s: no gearmand took the slot at %s (%s); offered again each second",
                        name, _shown(slot), err)
        elif replaced != slot:
            log.warning("schedule %s: the slot at %s was never submitted (no gearmand took it); the one at "
                        "%s replaces it", name, _shown(replaced), _shown(slot))
        self.unsent[name] = slot
        self._resend_at = time.monotonic() + RESEND_INTERVAL

    def _resend(self, records: Records, submitter: Submitting) -> None:
        for name, slot in list(self.unsent.items()):
            schedule = self.fleet.get(name)
            if schedule is not None:
                self._send(records, submitter, name, schedule, slot)

    def _tell_missed(self, name: str, schedule: Schedule, floor: int, newest: int, count: int) -> None:
        runs = (f"catch_up = once: the one at {_shown(newest)} runs now" if schedule.catch_up == "once"
                else "catch_up = skip: not run")
        log.warning("schedule %s: %d slot(s) from %s to %s missed, no leader fired them in time (%s)", name, count,
                    _shown(schedule.after(floor)), _shown(newest), runs)


def _described(name: str, definition: dict) -> str:
    try:
        return from_definition(name, definition).describe()
    except ValueError as err:  # a newer version's: said as it is
        return f"unreadable here: {err}"


def _shown(slot: int) -> str:
    return f"{datetime.datetime.fromtimestamp(slot, datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"
