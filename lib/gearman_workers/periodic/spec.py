"""One entry of [schedules]: what to submit, and when. A slot is a moment a
schedule is due, in whole Unix seconds; every host computes the same slots
(`every` counts from the Unix epoch, `cron` reads its zone's wall clock), so
whichever pool leads fires the same ones."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import zoneinfo
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")  # NAME@SLOT must fit gearmand's 64-byte unique
CATCH_UP = ("skip", "once")
PRIORITIES = ("high", "normal", "low")  # jobs/submit.py's, named here: config.py reads this module
MAX_EVERY = 366 * 86400
MAX_COUNTED = 10_000  # missed slots of a cron counted one by one, up to this many
MAX_PAYLOAD = 64 * 1024  # published to Redis by every pool each second: small by design
SCHEDULE_KEYS: tuple[tuple[str, str], ...] = (
    ("task", "the Gearman function to submit (served by this pool or any other worker)"),
    ("cron", 'five cron fields, "0 3 * * *", in the host\'s time zone or `timezone`'),
    ("every", "or: seconds between two slots, counted from the Unix epoch (1 to a year)"),
    ("payload", f"the job's payload, text (default empty; up to {MAX_PAYLOAD // 1024} KiB)"),
    ("priority", "high, normal or low (default normal)"),
    ("catch_up", "skip (default) or once: after the leader was away, also run the newest missed slot"),
    ("timezone", "an IANA zone for `cron`, \"Europe/Berlin\" (default: the host's)"),
)


@dataclasses.dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    cron: str = ""
    every: int = 0
    payload: str = ""
    priority: str = "normal"
    catch_up: str = "skip"
    timezone: str = ""

    def definition(self) -> dict[str, Any]:
        """What it is, without its name: what the fleet compares."""
        return {key: value for key, value in dataclasses.asdict(self).items()
                if key != "name" and value != getattr(Schedule, key, None)} | {"task": self.task}

    @property
    def digest(self) -> str:
        text = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        if self.every:
            return f"every {self.every} s"
        return f"cron {self.cron}" + (f" ({self.timezone})" if self.timezone else "")

    def unique(self, slot: int) -> str:
        """The job's unique: NAME@the slot in UTC, the same from any leader."""
        return f"{self.name}@{datetime.datetime.fromtimestamp(slot, datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"

    # --- slots --------------------------------------------------------------

    def latest(self, now: float) -> int:
        """The newest slot at or before NOW."""
        if self.every:
            return int(now // self.every) * self.every
        return _stamp(next(CronSim(self.cron, self._moment(int(now) + 1), reverse=True)))

    def after(self, slot: int) -> int:
        """The first slot after SLOT."""
        if self.every:
            return (slot // self.every + 1) * self.every
        return _stamp(next(CronSim(self.cron, self._moment(slot))))

    def between(self, low: int, high: int, most: int) -> tuple[list[int], int]:
        """The slots strictly between LOW and HIGH: the newest MOST of them,
        and how many there are (a cron's counted up to MAX_COUNTED)."""
        if self.every:
            first = low // self.every + 1
            last = -(-high // self.every) - 1
            count = max(0, last - first + 1)
            return [n * self.every for n in range(max(first, last - most + 1), last + 1)], count
        found: list[int] = []
        count = 0
        for moment in CronSim(self.cron, self._moment(low)):
            slot = _stamp(moment)
            if slot >= high or count >= MAX_COUNTED:
                break
            count += 1
            found = [*found, slot][-most:]
        return found, count

    def _moment(self, seconds: int) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(seconds, _zone(self.timezone))


def _stamp(moment: datetime.datetime) -> int:
    return int(moment.timestamp())


def _zone(name: str) -> datetime.tzinfo:
    """NAME's zone, or the host's: TZ, else /etc/localtime, else UTC."""
    name = name or os.environ.get("TZ", "").lstrip(":")
    if name:
        return zoneinfo.ZoneInfo(name)
    try:
        with Path("/etc/localtime").open("rb") as handle:
            return zoneinfo.ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return datetime.UTC


# --- from the configuration ------------------------------------------------


def parse(value: Any) -> dict[str, Schedule]:
    """[schedules] as read from TOML; ValueError names the schedule and key."""
    if not isinstance(value, dict):
        raise ValueError('expected a table of NAME = { task = ..., cron = "..." | every = SECONDS }')
    schedules = {}
    for name, table in value.items():
        if not NAME_RE.match(name):
            raise ValueError(f"schedule name {name!r}: 1 to 40 letters, digits, '.', '_' or '-'")
        try:
            schedules[name] = _schedule(name, table)
        except ValueError as err:
            raise ValueError(f"schedule {name!r}: {err}") from None
    return schedules


def from_definition(name: str, definition: dict[str, Any]) -> Schedule:
    """A schedule another pool published, or the leader fires (records.py,
    with its digest and source beside it); ValueError if it is not one."""
    return _schedule(name, {key: value for key, value in definition.items() if key not in ("digest", "from")})


def _schedule(name: str, table: Any) -> Schedule:
    if not isinstance(table, dict):
        raise ValueError('expected a table: { task = "...", every = 60 }')
    known = [key for key, _ in SCHEDULE_KEYS]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (expected {', '.join(known)})")
    if not isinstance(table.get("task"), str) or not table["task"] or \
            any(c.isspace() or c == "\0" for c in table["task"]):
        raise ValueError("task: a Gearman function name without white space is needed")
    if ("cron" in table) == ("every" in table):
        raise ValueError("give cron or every, one of them")
    if "timezone" in table and "cron" not in table:
        raise ValueError("timezone: only a cron schedule has one (every counts seconds)")
    schedule = Schedule(name, table["task"], cron=_cron(table["cron"]) if "cron" in table else "",
                        every=_every(table["every"]) if "every" in table else 0,
                        payload=_payload(table.get("payload", "")), priority=_choice(table, "priority", PRIORITIES),
                        catch_up=_choice(table, "catch_up", CATCH_UP), timezone=_timezone(table.get("timezone", "")))
    if schedule.cron:
        try:
            schedule.after(int(datetime.datetime.now(datetime.UTC).timestamp()))  # one that never comes is a typo
        except (StopIteration, CronSimError):
            raise ValueError(f"cron: {schedule.cron!r} has no next time") from None
    return schedule


def _cron(value: Any) -> str:
    if not isinstance(value, str) or len(value.split()) != 5:
        raise ValueError(f'cron: expected five fields "minute hour day month weekday", got {value!r}')
    text = " ".join(value.split())
    try:
        CronSim(text, datetime.datetime.now(datetime.UTC))
    except CronSimError as err:
        raise ValueError(f"cron: {text!r}: {err}") from None
    return text


def _every(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EVERY:
        raise ValueError(f"every: expected whole seconds from 1 to {MAX_EVERY}, got {value!r}")
    return value


def _payload(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"payload: expected text, got {value!r}")
    if len(value.encode()) > MAX_PAYLOAD:
        raise ValueError(f"payload: {len(value.encode())} bytes is over the {MAX_PAYLOAD}-byte limit")
    return value


def _choice(table: dict[str, Any], key: str, choices: Any) -> str:
    value = table.get(key, next(iter(choices)) if key == "catch_up" else "normal")
    if value not in choices:
        raise ValueError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _timezone(value: Any) -> str:
    if value == "":
        return ""  # the host's
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"timezone: {value!r} is not an IANA time zone this host knows") from None
    return str(value)
