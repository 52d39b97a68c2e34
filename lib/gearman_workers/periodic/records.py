"""What Redis keeps of the schedules, under PREFIX:jobs:schedules (beside
the lease they depend on, so that one ACL selector covers both):

    :published   hash: HOST/POOL -> that pool's schedules (JSON: name -> definition)
    :seen        hash: HOST/POOL -> when it last published (ms, Redis's clock)
    :fleet       hash: name -> the definition the leader fires (JSON, with its digest and source)
    :last        hash: name -> the newest slot claimed (Unix seconds): the claim
    :fired       hash: name -> that slot's record (JSON: slot, by, fired ms, submitted)

How a slot is fired once (firing.py): the leader claims it in one script
that checks the lease and that the slot is newer than the last one claimed
(`last`), then submits it to gearmand with the unique NAME@SLOT, then marks
it submitted. A second leader's claim of the same slot finds it taken, so
no slot is submitted twice. A leader that dies between the claim and
gearmand's answer leaves `submitted` false: its successor says so in the
log and does not submit it again, since gearmand most likely has it.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from ..jobs.keys import JobKeys

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

SYNC = _NOW + """
-- KEYS: published, seen, fleet, last, fired; ARGV: pool, its schedules (JSON; '' publishes nothing), stale ms,
-- '1' to read what every pool published (the leader). Each renewal: publish ours, forget pools gone quiet,
-- read the rest.
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) redis.call('HSET', KEYS[2], ARGV[1], now)
end
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  if tonumber(seen[i + 1]) < now - tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[2], seen[i]) redis.call('HDEL', KEYS[1], seen[i])
  end
end
local published = {}
if ARGV[4] == '1' then published = redis.call('HGETALL', KEYS[1]) end
return {now, published, redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5])}
"""

ADOPT = """
-- KEYS: leader, fleet; ARGV: token, then name, definition pairs. The leader's word on what is fired.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

CLAIM = _NOW + """
-- KEYS: leader, last, fired; ARGV: token, name, slot, floor (the newest slot this leader knows of), by.
-- -1: not the leader; 0: that slot, or a newer one, is claimed already; 1: ours to submit.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local slot = tonumber(ARGV[3])
local last = math.max(tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1'), tonumber(ARGV[4]))
if slot <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], slot)
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode({slot = slot, by = ARGV[5], fired = now, submitted = false}))
return 1
"""

SUBMITTED = """
-- KEYS: last, fired; ARGV: name, slot. Gearmand holds the job of that slot.
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1') ~= tonumber(ARGV[2]) then return 0 end
local record = cjson.decode(redis.call('HGET', KEYS[2], ARGV[1]))
record.submitted = true
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(record))
return 1
"""


class Keys:
    def __init__(self, jobs: JobKeys) -> None:
        base = jobs.schedules
        self.leader = jobs.leader
        self.published, self.seen, self.fleet = f"{base}:published", f"{base}:seen", f"{base}:fleet"
        self.last, self.fired = f"{base}:last", f"{base}:fired"


class Synced:
    """One SYNC's reading: Redis's clock, and the records as dicts."""

    def __init__(self, reply: list[Any]) -> None:
        self.now = int(reply[0]) / 1000
        self.published = {pool: json.loads(text) for pool, text in _pairs(reply[1])}
        self.fleet = {name: json.loads(text) for name, text in _pairs(reply[2])}
        self.last = {name: int(slot) for name, slot in _pairs(reply[3])}
        self.fired = {name: json.loads(text) for name, text in _pairs(reply[4])}


class Records:
    """The scripts, bound to one client and one key prefix."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.client, self.keys = client, Keys(keys)
        self._sync = client.register_script(SYNC)
        self._adopt = client.register_script(ADOPT)
        self._claim = client.register_script(CLAIM)
        self._submitted = client.register_script(SUBMITTED)

    def sync(self, pool: str, own: dict[str, dict[str, Any]] | None, stale_ms: int, leading: bool) -> Synced:
        """Publish OWN (None: nothing); what every pool published is read only when LEADING."""
        k = self.keys
        published = "" if own is None else json.dumps(own, sort_keys=True)
        return Synced(self._sync(keys=[k.published, k.seen, k.fleet, k.last, k.fired],
                                 args=[pool, published, stale_ms, "1" if leading else "0"]))

    def adopt(self, token: str, fleet: dict[str, dict[str, Any]]) -> bool:
        pairs = [item for name, definition in sorted(fleet.items()) for item in (name, json.dumps(definition))]
        return bool(self._adopt(keys=[self.keys.leader, self.keys.fleet], args=[token, *pairs]))

    def claim(self, token: str, name: str, slot: int, floor: int, by: str) -> int:
        k = self.keys
        return int(self._claim(keys=[k.leader, k.last, k.fired], args=[token, name, slot, floor, by]))

    def submitted(self, name: str, slot: int) -> None:
        self._submitted(keys=[self.keys.last, self.keys.fired], args=[name, slot])

    def read(self) -> Synced:
        """Everything, for gm-ctl schedule list (publishes nothing, forgets nobody)."""
        k = self.keys
        seconds, micros = self.client.time()
        replies = [self.client.hgetall(key) for key in (k.published, k.fleet, k.last, k.fired)]
        return Synced([int(seconds) * 1000 + int(micros) // 1000,
                       *([item for pair in reply.items() for item in pair] for reply in replies)])


def _pairs(flat: list[Any]) -> list[tuple[str, Any]]:
    return [(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
