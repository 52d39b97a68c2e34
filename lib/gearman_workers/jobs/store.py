"""The job records in Redis, and every change to them as one Lua script,
so that each is atomic and takes Redis's clock (TIME), whatever host runs it.

A chain (PREFIX:jobs:chain:ID, a hash) is one failed job, or one delayed
job not yet run (schedule.py): task, payload, unique (the client's),
priority, retries, attempts (runs so far), state (delayed, retrying,
queued, running, done, dead, cancelled), created, updated, due,
first_error, first_trace, last_error, last_trace and runs (JSON: host,
pool, times and error of each).

How a due job moves to gearmand exactly once (keeper.py):
1. claim: the leader, in one script that checks its lease, moves the due
   chain from `due` to `moving` with a deadline (MOVING_MS) and reads it;
2. submit: the leader submits run N as a background job, unique gw:ID:N;
3. settle: on gearmand's JOB_CREATED it takes the chain out of `moving`.
A leader that dies between 1 and 3 leaves the chain in `moving`; the next
claim after the deadline puts it back in `due` and it is submitted again.
If the first submission did reach gearmand, the second has the same unique:
gearmand folds it into the first while that one waits or runs, and when it
has already ended, its child left the marker PREFIX:jobs:ended:ID:N before
it answered (end_run), so the second finds the marker and does nothing.
A run whose child died in it leaves no marker: gearmand hands it out again
and it runs again, as any job would. Nothing is lost, and no run that
ended happens twice.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from .keys import JobKeys
from .results import DEAD, RETRYING
from .spool import Failure

MOVING_MS = 10_000      # how long a claim holds before another leader may take the chain again
# A second submission of a run follows the first within a lapsed claim or
# two, but may then wait in a long queue: two weeks covers any backlog.
ENDED_MARKER_TTL = 14 * 86400
CHAIN_TTL_AFTER_DONE = 86400
MAX_RUNS_KEPT = 25

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

RECORD_FAILURE = _NOW + """
-- KEYS: chain, due, dead, dead-tasks; ARGV: id, attempt, task, unique, payload, retries,
-- outcome, delay ms, error, trace, run (JSON)
local attempt = tonumber(ARGV[2])
local have = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if have >= attempt then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'task', ARGV[3], 'unique', ARGV[4], 'payload', ARGV[5], 'created', now,
             'first_error', ARGV[9], 'first_trace', ARGV[10], 'runs', '[]')
end
local runs = cjson.decode(redis.call('HGET', KEYS[1], 'runs') or '[]')
table.insert(runs, cjson.decode(ARGV[11]))
while #runs > tonumber(ARGV[12]) do table.remove(runs, 1) end
redis.call('HSET', KEYS[1], 'attempts', attempt, 'retries', ARGV[6], 'last_error', ARGV[9],
           'last_trace', ARGV[10], 'runs', cjson.encode(runs), 'updated', now)
if ARGV[7] == 'retrying' then
  local due = now + tonumber(ARGV[8])
  redis.call('HSET', KEYS[1], 'state', 'retrying', 'due', due)
  redis.call('ZADD', KEYS[2], due, ARGV[1])
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'state', 'dead', 'died', now)
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
  redis.call('PERSIST', KEYS[1])
end
return 1
"""

LEASE = """
-- KEYS: leader; ARGV: token, ttl ms. 1: ours (taken or renewed), 0: another's
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CLAIM = _NOW + """
-- KEYS: leader, due, moving; ARGV: token, most, moving ms, chain key prefix
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[2], now, id)
end
local claimed = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[2], id)
  local chain = ARGV[4] .. id
  local fields = redis.call('HMGET', chain, 'task', 'payload', 'attempts', 'priority')
  if fields[1] then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
    table.insert(claimed, id) table.insert(claimed, fields[1]) table.insert(claimed, fields[2])
    table.insert(claimed, tonumber(fields[3] or '0') + 1) table.insert(claimed, fields[4] or 'normal')
  end
end
-- first: how long until the next chain is due or a claim lapses (-1: nothing waits)
local next = -1
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(0, tonumber(first[2]) - now)
    if next < 0 or wait < next then next = wait end
  end
end
table.insert(claimed, 1, next)
return claimed
"""

SETTLE = """
-- KEYS: moving, chain; ARGV: id, chain ttl s once a delayed job is in gearmand
-- (a chain whose run ended meanwhile, a second submission's, keeps its state)
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local state = redis.call('HGET', KEYS[2], 'state')
  if state == 'retrying' then redis.call('HSET', KEYS[2], 'state', 'queued') end
  if state == 'delayed' then
    redis.call('HSET', KEYS[2], 'state', 'queued') redis.call('EXPIRE', KEYS[2], ARGV[2])
  end
end
return 1
"""

BEGIN_RUN = """
-- KEYS: ended marker, chain. {0}: this run ended before; {1, the client's unique}
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'state', 'running') end
return {1, redis.call('HGET', KEYS[2], 'unique') or false}
"""

END_RUN = """
-- KEYS: ended marker, chain; ARGV: marker ttl s, 'done' or 'failed', chain ttl s once done
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
if ARGV[2] == 'done' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'state', 'done') redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 1
"""

RETRY_DEAD = _NOW + """
-- KEYS: chain, new chain, dead, dead-tasks, due; ARGV: id, new id. A fresh count under a new id:
-- the markers of the old runs must not stop the new ones.
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
local task = redis.call('HGET', KEYS[1], 'task')
if task then redis.call('HINCRBY', KEYS[4], task, -1) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'attempts', 0, 'state', 'retrying', 'due', now, 'retried_from', ARGV[1])
redis.call('ZADD', KEYS[5], now, ARGV[2])
return 1
"""

CANCEL = _NOW + """
-- KEYS: chain, due, moving, ended marker of the next run; ARGV: id, attempts seen, marker ttl s, chain ttl s.
-- A chain waiting for its next run (retrying, or queued in gearmand) ends cancelled: out of the
-- due and moving sets, and its next run marked ended, so that a submission already made does nothing.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'retrying' and state ~= 'queued' and state ~= 'delayed' then return state end
if (redis.call('HGET', KEYS[1], 'attempts') or '0') ~= ARGV[2] then return 'changed' end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], 'cancelled', 'EX', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 'now'
"""

PURGE_DEAD = """
-- KEYS: chain, dead, dead-tasks; ARGV: id
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local task = redis.call('HGET', KEYS[1], 'task')
if task then redis.call('HINCRBY', KEYS[3], task, -1) end
redis.call('DEL', KEYS[1])
return 1
"""


class JobStore:
    """The scripts, bound to one client and one key prefix."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.client, self.keys = client, keys
        self._record = client.register_script(RECORD_FAILURE)
        self._lease = client.register_script(LEASE)
        self._release = client.register_script(RELEASE)
        self._claim = client.register_script(CLAIM)
        self._settle = client.register_script(SETTLE)
        self._begin = client.register_script(BEGIN_RUN)
        self._end = client.register_script(END_RUN)
        self._retry_dead = client.register_script(RETRY_DEAD)
        self._purge_dead = client.register_script(PURGE_DEAD)
        self._cancel = client.register_script(CANCEL)

    def record_failure(self, failure: Failure) -> bool:
        """Keep FAILURE's run in its chain and schedule or bury the chain;
        False when that run was kept already (a spool file moved twice)."""
        assert failure.outcome in (RETRYING, DEAD)
        k = self.keys
        return bool(self._record(keys=[k.chain(failure.chain), k.due, k.dead, k.dead_tasks], args=[
            failure.chain, failure.attempt, failure.task, failure.unique, failure.payload, failure.retries,
            failure.outcome, int(failure.delay * 1000), failure.error, failure.trace,
            json.dumps(failure.run()), MAX_RUNS_KEPT]))

    def hold_lease(self, token: str, ttl_ms: int) -> bool:
        return bool(self._lease(keys=[self.keys.leader], args=[token, ttl_ms]))

    def release_lease(self, token: str) -> None:
        self._release(keys=[self.keys.leader], args=[token])

    def claim_due(self, token: str, most: int) -> tuple[list[tuple[str, str, bytes, int, str]], float | None] | None:
        """Up to MOST due chains, (id, task, payload, the run to submit,
        priority), and the seconds until the next one is due or a claim
        lapses (None: nothing waits); None when TOKEN no longer holds the lease."""
        found = self._claim(keys=[self.keys.leader, self.keys.due, self.keys.moving],
                            args=[token, most, MOVING_MS, self.keys.chain("")])
        if found is None:
            return None
        wait = None if int(found[0]) < 0 else int(found[0]) / 1000
        return [(_text(found[i]), _text(found[i + 1]), bytes(found[i + 2]), int(found[i + 3]), _text(found[i + 4]))
                for i in range(1, len(found), 5)], wait

    def settle(self, chain: str) -> None:
        self._settle(keys=[self.keys.moving, self.keys.chain(chain)], args=[chain, CHAIN_TTL_AFTER_DONE])

    def begin_run(self, chain: str, attempt: int) -> tuple[bool, bytes | None]:
        """(this run has not ended before, the client's unique)."""
        found = self._begin(keys=[self.keys.ended(chain, attempt), self.keys.chain(chain)])
        return bool(found[0]), (bytes(found[1]) if len(found) > 1 and found[1] is not None else None)

    def end_run(self, chain: str, attempt: int, done: bool) -> None:
        """Run ATTEMPT of CHAIN ended (DONE: it succeeded, and the chain with it)."""
        self._end(keys=[self.keys.ended(chain, attempt), self.keys.chain(chain)],
                  args=[ENDED_MARKER_TTL, "done" if done else "failed", CHAIN_TTL_AFTER_DONE])

    def retry_dead(self, chain: str, fresh: str) -> bool:
        """Dead letter CHAIN due now as FRESH, its count of runs at 0; False: no such letter."""
        k = self.keys
        return bool(self._retry_dead(keys=[k.chain(chain), k.chain(fresh), k.dead, k.dead_tasks, k.due],
                                     args=[chain, fresh]))

    def purge_dead(self, chain: str) -> bool:
        k = self.keys
        return bool(self._purge_dead(keys=[k.chain(chain), k.dead, k.dead_tasks], args=[chain]))

    def cancel(self, chain: str) -> str:
        """Cancel CHAIN's next run: "now", else the state that has no next
        run to cancel (running, done, dead, cancelled) or "missing"."""
        k = self.keys
        for _ in range(3):  # a run that ends meanwhile changes the count: read it again
            attempts = int(self.client.hget(k.chain(chain), "attempts") or 0)
            state = _text(self._cancel(keys=[k.chain(chain), k.due, k.moving, k.ended(chain, attempts + 1)],
                                       args=[chain, attempts, ENDED_MARKER_TTL, CHAIN_TTL_AFTER_DONE]))
            if state != "changed":
                return state
        return "running"

    def dead_letters(self, task: str | None = None, older_than: float | None = None) -> list[dict[str, Any]]:
        """Every dead letter (of TASK; dead for more than OLDER_THAN seconds), oldest first."""
        upper: float | str = "+inf"
        if older_than is not None:
            seconds, micros = self.client.time()  # Redis's clock: the one `died` was taken on
            upper = int(seconds) * 1000 + int(micros) // 1000 - int(older_than * 1000)
        found = []
        rows: Any = self.client.zrangebyscore(self.keys.dead, "-inf", upper, withscores=True)
        for raw_id, died in rows:
            letter = self.letter(_text(raw_id))
            if letter is not None and (task is None or letter["task"] == task):
                letter["died"] = float(died) / 1000
                found.append(letter)
        return found

    def letter(self, chain: str) -> dict[str, Any] | None:
        """Chain CHAIN as a dict (payload as bytes), or None."""
        fields = self.client.hgetall(self.keys.chain(chain))
        if not fields:
            return None
        found: dict[str, Any] = {_text(k): v for k, v in fields.items()}
        for name in ("task", "unique", "state", "first_error", "first_trace", "last_error", "last_trace",
                     "retried_from"):
            if name in found:
                found[name] = _text(found[name])
        for name in ("attempts", "retries"):
            found[name] = int(found.get(name, 0))
        for name in ("created", "updated", "due", "died"):
            if name in found:
                found[name] = int(found[name]) / 1000
        found["runs"] = json.loads(found.get("runs", b"[]"))
        found["id"] = chain
        return found

    def dead_counts(self) -> dict[str, int]:
        return {_text(task): int(n) for task, n in self.client.hgetall(self.keys.dead_tasks).items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
