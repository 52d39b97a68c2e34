"""The schedules' pieces alone: the [schedules] table, slots in time, and
the leader's decisions (fired, late, missed, caught up, not taken by
gearmand), with the Redis records and gearmand faked in memory."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from gearman_workers import config
from gearman_workers.jobs.submit import PRIORITIES, SubmitFailed
from gearman_workers.periodic import firing, spec
from gearman_workers.periodic.records import Synced


def at(text: str, zone: str = "UTC") -> int:
    moment = datetime.datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(zone))
    return int(moment.timestamp())


def one(**table: Any) -> spec.Schedule:
    return spec.parse({"s": table})["s"]


@pytest.mark.parametrize(("table", "said"), [
    ({"task": "t"}, "schedule 's': give cron or every, one of them"),
    ({"task": "t", "every": 0}, "schedule 's': every: expected whole seconds from 1 to 31622400, got 0"),
    ({"task": "t", "every": 1.5}, "every: expected whole seconds"),
    ({"task": "t", "cron": "61 * * * *"}, "schedule 's': cron: '61 * * * *': Bad minute"),
    ({"task": "t", "cron": "* * * *"}, 'cron: expected five fields "minute hour day month weekday"'),
    ({"task": "t", "cron": "0 0 30 2 *"}, "cron: '0 0 30 2 *'"),
    ({"task": "t", "every": 5, "timezone": "UTC"}, "timezone: only a cron schedule has one"),
    ({"task": "t", "cron": "* * * * *", "timezone": "Mars/Base"}, "'Mars/Base' is not an IANA time zone"),
    ({"task": "t", "every": 5, "catch_up": "all"}, "catch_up: expected one of skip, once, got 'all'"),
    ({"task": "t", "every": 5, "priority": "urgent"}, "priority: expected one of high, normal, low"),
    ({"task": "t", "every": 5, "payload": b"x"}, "payload: expected text"),
    ({"task": "a b", "every": 5}, "task: a Gearman function name without white space"),
    ({"task": "t", "every": 5, "evry": 1}, "unknown key(s) evry (expected task, cron, every"),
])
def test_a_bad_schedule_is_one_line_naming_it_and_its_key(table: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError) as caught:
        spec.parse({"s": table})
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_schedule_name_must_fit_the_unique() -> None:
    with pytest.raises(ValueError, match="1 to 40 letters"):
        spec.parse({"x" * 41: {"task": "t", "every": 1}})
    longest = spec.parse({"x" * 40: {"task": "t", "every": 1}})["x" * 40]
    assert len(longest.unique(2**31 - 1).encode()) <= 64  # gearmand's limit


def test_the_priorities_are_the_submitters() -> None:
    assert tuple(PRIORITIES) == spec.PRIORITIES


def test_schedules_round_trip_through_print_config_and_need_redis(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[control]\nredis_url = "redis://127.0.0.1:1/0"\nallow_unsigned = true\n'
                    '[tasks]\necho = "tasks:echo"\n[schedules]\n'
                    'nightly = { task = "report", cron = "0 3 * * *", timezone = "Europe/Berlin", payload = "all" }\n'
                    'beat = { task = "echo", every = 30, catch_up = "once", priority = "high" }\n')
    loaded = config.load(path=path, require_tasks=False)
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml(loaded))
    assert config.load(path=again, require_tasks=False).schedules == loaded.schedules
    path.write_text('[tasks]\necho = "tasks:echo"\n[schedules]\nbeat = { task = "echo", every = 30 }\n')
    with pytest.raises(config.ConfigError, match=r"\[schedules\] beat: .* set \[control\] redis_url"):
        config.load(path=path)


def test_every_counts_from_the_epoch_so_every_host_has_the_same_slots() -> None:
    beat = one(task="t", every=30)
    assert beat.latest(1000.0) == 990 and beat.latest(990.0) == 990 and beat.after(990) == 1020
    assert beat.between(990, 1110, 2) == ([1050, 1080], 3)
    assert beat.between(990, 1020, 5) == ([], 0)


def test_cron_reads_its_zones_wall_clock_through_a_dst_change() -> None:
    nightly = one(task="t", cron="0 3 * * *", timezone="Europe/Berlin")
    assert nightly.latest(at("2026-03-29T02:59:00", "UTC")) == at("2026-03-29T03:00:00", "Europe/Berlin")
    spring = nightly.after(at("2026-03-28T03:00:00", "Europe/Berlin")) - at("2026-03-28T03:00:00", "Europe/Berlin")
    assert spring == 23 * 3600  # 03:00 by the wall clock, an hour sooner when the clocks go forward
    assert nightly.latest(at("2026-03-29T03:00:00", "Europe/Berlin")) == at("2026-03-29T03:00:00", "Europe/Berlin")
    assert nightly.unique(at("2026-12-24T03:00:00", "Europe/Berlin")) == "s@2026-12-24T02:00:00Z"
    week = nightly.between(at("2026-12-01T12:00:00"), at("2026-12-08T12:00:00"), 2)
    assert week == ([at("2026-12-07T03:00:00", "Europe/Berlin"), at("2026-12-08T03:00:00", "Europe/Berlin")], 7)


def test_the_digest_changes_with_the_definition_and_not_with_the_name() -> None:
    base = one(task="t", every=30)
    assert base.digest == spec.parse({"other": {"task": "t", "every": 30}})["other"].digest
    assert base.digest != one(task="t", every=31).digest != one(task="t", every=30, payload="x").digest
    assert spec.from_definition("s", base.definition() | {"digest": "x", "from": "h/p"}) == base


# --- the leader's decisions, against records and a gearmand in memory -------------


class Records:
    """The records of records.py, kept in dicts, with the same rules."""

    def __init__(self, now: float) -> None:
        self.now, self.leader = now, "token"
        self.published: dict[str, dict[str, Any]] = {}
        self.fleet: dict[str, dict[str, Any]] = {}
        self.last: dict[str, int] = {}
        self.fired: dict[str, dict[str, Any]] = {}

    def sync(self, pool: str, own: dict[str, Any] | None, stale_ms: int, leading: bool) -> Synced:
        if own is not None:
            self.published[pool] = own
        published = {k: _json(v) for k, v in self.published.items()} if leading else {}
        flat = [[item for pair in table.items() for item in pair] for table in (
            published, {k: _json(v) for k, v in self.fleet.items()},
            self.last, {k: _json(v) for k, v in self.fired.items()})]
        return Synced([int(self.now * 1000), *flat])

    def adopt(self, token: str, fleet: dict[str, Any]) -> bool:
        if token != self.leader:
            return False
        self.fleet = fleet
        return True

    def claim(self, token: str, name: str, slot: int, floor: int, by: str) -> int:
        if token != self.leader:
            return -1
        if slot <= max(self.last.get(name, -1), floor):
            return 0
        self.last[name] = slot
        self.fired[name] = {"slot": slot, "by": by, "fired": self.now * 1000, "submitted": False}
        return 1

    def submitted(self, name: str, slot: int) -> None:
        if self.last.get(name) == slot:
            self.fired[name]["submitted"] = True


def _json(value: Any) -> str:
    return json.dumps(value)


class Gearmand:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, str, bytes, str]] = []
        self.down = False

    def submit(self, task: str, unique: bytes, payload: bytes, priority: str = "normal") -> bytes:
        if self.down:
            raise SubmitFailed("127.0.0.1:4730: connection refused")
        self.jobs.append((task, unique.decode(), payload, priority))
        return b"H:1"


class Leader:
    """A Scheduler leading at Redis time NOW, the clock moved by hand."""

    def __init__(self, schedules: str, now: float, records: Records | None = None) -> None:
        table = tomllib.loads(schedules)
        self.records = records or Records(now)
        self.gearmand = Gearmand()
        self.scheduler = firing.Scheduler(spec.parse(table), "host-a/alpha", threading.Lock())
        self.scheduler.renew(self.records, True, "token")  # type: ignore[arg-type]

    def at(self, now: float) -> list[str]:
        """Move the clock to NOW, fire; the uniques submitted meanwhile."""
        self.records.now = now
        self.scheduler.renew(self.records, True, "token")  # type: ignore[arg-type]
        seen = len(self.gearmand.jobs)
        self.scheduler.offset = now - time.time()
        self.scheduler.fire_due(self.records, self.gearmand, "token")  # type: ignore[arg-type]
        return [unique for _, unique, _, _ in self.gearmand.jobs[seen:]]


T0 = at("2026-12-05T10:00:00")


def test_a_first_leader_fires_from_the_next_slot_never_one_it_cannot_know_about(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    leader = Leader('beat = { task = "echo", every = 10, payload = "hi", priority = "low" }', T0 + 3)
    assert leader.at(T0 + 3) == []  # the slot at T0 may have been fired by a leader whose records were lost
    assert "no slot of it was claimed before" in caplog.text
    assert leader.at(T0 + 10.05) == ["beat@2026-12-05T10:00:10Z"]
    assert leader.gearmand.jobs[0] == ("echo", "beat@2026-12-05T10:00:10Z", b"hi", "low")
    assert leader.at(T0 + 10.5) == [] and leader.at(T0 + 20) == ["beat@2026-12-05T10:00:20Z"]
    assert leader.records.fired["beat"] == {"slot": T0 + 20, "by": "host-a/alpha", "fired": (T0 + 20) * 1000,
                                            "submitted": True}
    assert leader.scheduler.fired == {"beat": 2} and leader.scheduler.lag.observed == 2


@pytest.mark.parametrize("catch_up", ["skip", "once"])
def test_slots_no_leader_fired_are_logged_and_skipped_or_run_once(catch_up: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    records = Records(T0)
    records.last["beat"] = T0  # a leader before fired the slot at T0, then died
    leader = Leader(f'beat = {{ task = "echo", every = 10, catch_up = "{catch_up}" }}', T0 + 45, records)
    fired = leader.at(T0 + 45)
    assert "3 slot(s) from 2026-12-05 10:00:10 UTC to 2026-12-05 10:00:30 UTC missed" in caplog.text
    assert fired == (["beat@2026-12-05T10:00:30Z"] if catch_up == "once" else []) + ["beat@2026-12-05T10:00:40Z"]


def test_a_slot_a_few_seconds_late_is_fired_late_and_one_past_the_grace_is_missed(
        caplog: pytest.LogCaptureFixture) -> None:
    records = Records(T0)
    records.last["nightly"] = at("2026-12-04T03:00:00")
    leader = Leader('nightly = { task = "report", cron = "0 3 * * *" }', at("2026-12-05T03:00:04"), records)
    assert leader.at(at("2026-12-05T03:00:04")) == ["nightly@2026-12-05T03:00:00Z"]  # a takeover's delay
    assert "missed" not in caplog.text
    records.last["nightly"] = at("2026-12-05T03:00:00")
    late = Leader('nightly = { task = "report", cron = "0 3 * * *" }', at("2026-12-06T03:05:00"), records)
    assert late.at(at("2026-12-06T03:05:00")) == []  # five minutes late: missed, and skip says so
    assert "1 slot(s) from 2026-12-06 03:00:00 UTC to 2026-12-06 03:00:00 UTC missed" in caplog.text


def test_a_slot_gearmand_did_not_take_is_offered_again_and_a_newer_one_replaces_it(
        caplog: pytest.LogCaptureFixture) -> None:
    records = Records(T0)
    records.last["beat"] = T0
    leader = Leader('beat = { task = "echo", every = 10 }', T0 + 1, records)
    leader.gearmand.down = True
    assert leader.at(T0 + 10) == [] and records.fired["beat"]["submitted"] is False
    assert "no gearmand took the slot at 2026-12-05 10:00:10 UTC" in caplog.text
    assert leader.at(T0 + 20) == []
    assert "the slot at 2026-12-05 10:00:10 UTC was never submitted" in caplog.text
    leader.gearmand.down = False
    leader.scheduler._resend_at = 0.0  # the resend interval passed
    assert leader.at(T0 + 21) == ["beat@2026-12-05T10:00:20Z"] and records.fired["beat"]["submitted"] is True


def test_a_leader_whose_lease_lapsed_claims_nothing_and_stands_down() -> None:
    records = Records(T0)
    records.last["beat"] = T0
    leader = Leader('beat = { task = "echo", every = 10 }', T0 + 1, records)
    records.leader = "someone else"
    assert leader.at(T0 + 10) == [] and records.last["beat"] == T0
    assert leader.scheduler.fleet == {}


def test_the_leader_fires_what_pools_publish_and_its_own_definition_wins() -> None:
    records = Records(T0)
    records.published = {"host-b/beta": {"beat": {"task": "other", "every": 10}, "report": {"task": "r", "every": 60}},
                         "host-c/gamma": {"report": {"task": "r", "every": 60}}}
    leader = Leader('beat = { task = "echo", every = 10 }', T0, records)
    assert sorted(records.fleet) == ["beat", "report"]
    assert records.fleet["beat"]["task"] == "echo" and records.fleet["beat"]["from"] == "host-a/alpha"
    assert records.fleet["report"]["from"] == "host-b/beta"
    assert leader.scheduler.fleet["report"].task == "r"


def test_a_pool_whose_schedule_differs_from_the_leaders_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    records = Records(T0)
    records.fleet = {"beat": {"task": "echo", "every": 10, "digest": "0123456789ab", "from": "host-b/beta"}}
    follower = firing.Scheduler(spec.parse({"beat": {"task": "echo", "every": 30}}), "host-a/alpha",
                                threading.Lock())
    for _ in range(3):
        follower.renew(records, False, "token")  # type: ignore[arg-type]
    assert caplog.text.count("differs from the one the leader fires") == 1
    assert "every 30 s" in caplog.text and "every 10 s, from host-b/beta" in caplog.text
