"""What `gm-ctl schedule list` shows: every schedule the leader fires or a
live pool publishes, when it is next due, its last slot and who fired it,
and the leader; as a table, or as JSON (fields stable, docs/schedules.md)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import redis

from ..jobs.keys import JobKeys
from .records import Records, Synced
from .spec import Schedule, from_definition


def document(client: redis.Redis, keys: JobKeys) -> dict[str, Any]:
    found = Records(client, keys).read()
    raw = client.get(keys.leader)
    leader = "/".join(_text(raw).split("/")[:2]) if raw is not None else None
    names = sorted(set(found.fleet) | {name for schedules in found.published.values() for name in schedules})
    rows = []
    for name in names:
        try:
            rows.append(_row(name, found))
        except ValueError:
            continue  # published by a newer version, in a form this one cannot read
    return {"leader": leader, "now": found.now, "schedules": rows}


def _row(name: str, found: Synced) -> dict[str, Any]:
    fired = found.fleet.get(name)
    published = {pool: schedules[name] for pool, schedules in found.published.items() if name in schedules}
    definition = fired if fired is not None else next(iter(published.values()))
    schedule = from_definition(name, definition)
    digest = fired.get("digest") if fired else None
    last = found.fired.get(name)
    return {"name": name, "task": schedule.task, "when": schedule.describe(), "definition": schedule.definition(),
            "fired_by_leader": fired is not None, "digest": schedule.digest,
            "next_due": _next_due(schedule, found.last.get(name), found.now) if fired is not None else None,
            "last_slot": last["slot"] if last else None, "last_fired": last["fired"] / 1000 if last else None,
            "last_by": last["by"] if last else None, "last_submitted": last["submitted"] if last else None,
            "published_by": sorted(published),
            "differing": sorted(pool for pool, theirs in published.items()
                                if digest is not None and from_definition(name, theirs).digest != digest)}


def _next_due(schedule: Schedule, last: int | None, now: float) -> int:
    current = schedule.latest(now)
    return current if last is not None and last < current else schedule.after(current)


def show(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return
    print(f"leader: {found['leader'] or 'none (no pool holds the lease)'}")
    if not found["schedules"]:
        print("no schedule: no live pool has [schedules]")
        return
    print(f"{'NAME':20s} {'TASK':16s} {'WHEN':22s} {'NEXT DUE':20s} {'LAST SLOT':20s} BY")
    for row in found["schedules"]:
        last = _when(row["last_slot"]) + ("" if row["last_submitted"] in (None, True) else " (not submitted)")
        nxt = _when(row["next_due"]) if row["fired_by_leader"] else "(not fired yet)"
        print(f"{row['name']:20s} {row['task']:16s} {row['when']:22s} {nxt:20s} {last:20s} {row['last_by'] or '-'}")
        if row["differing"]:
            print(f"  differs from the leader's in: {', '.join(row['differing'])} (theirs is not fired)")


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{datetime.datetime.fromtimestamp(seconds, datetime.UTC):%Y-%m-%d %H:%M:%S}Z"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
