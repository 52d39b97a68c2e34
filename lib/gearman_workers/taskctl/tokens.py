"""Concurrency tokens and start permits in Redis: at most N jobs of a task
at once, and at most R starts a second, fleet-wide.

A token is a member of the sorted set PREFIX:tasks:TASK:tokens, scored with
the time (Redis's clock, milliseconds) at which it lapses. A pool holds
tokens for its children (member HOST/POOL/PID) and renews them while they
live; a token that is not renewed (its master killed, its host gone)
lapses within TOKEN_TTL_MS. Every pool that serves the task also keeps its
own name in PREFIX:tasks:TASK:pools, with the same expiry: the pools last
seen there decide each pool's share of N while Redis is away (governor.py).

Start permits: PREFIX:tasks:TASK:rate holds the time (microseconds, Redis's
clock) at which the next permit may start, and every permit reserved moves
it on by 1/R: permits are handed out at most R a second across the fleet,
each at its own time (a generic cell rate: no burst builds up while nobody
asks). A pool reserves one permit for each of its children that has none,
and grants it at its time (governor.py).

The keys expire as a whole too: a pool's Redis user may write only keys
that do (see the redis role's ACL).
"""

from __future__ import annotations

import time
from typing import Any

TOKEN_TTL_MS = 5000

# KEYS: tokens, pools. ARGV: N, ttl ms, this pool, then the members it
# wants, those it holds first. Returns the members it holds now, and the
# pools that serve the task.
HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
local held = {}
for i = 4, #ARGV do
  local member = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], member) then
    if redis.call('ZCARD', KEYS[1]) > limit then
      redis.call('ZREM', KEYS[1], member)
    else
      redis.call('ZADD', KEYS[1], now + ttl, member)
      held[#held + 1] = member
    end
  elseif redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + ttl, member)
    held[#held + 1] = member
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return {held, redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

# KEYS: the rate key, pools. ARGV: microseconds between permits, how many,
# this pool, the pools' ttl ms. Returns Redis's time now and the time of each
# permit (microseconds), and the pools that serve the task.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local interval = tonumber(ARGV[1])
local next_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_at < now then next_at = now end
local times = {}
for i = 1, tonumber(ARGV[2]) do
  times[i] = string.format('%d', next_at)
  next_at = next_at + interval
end
redis.call('PSETEX', KEYS[1], math.ceil((next_at - now) / 1000) + 60000, string.format('%d', next_at))
return {string.format('%d', now), times, redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

# KEYS: tokens. ARGV: the members to give back.
RELEASE = """
for i = 1, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
return 0
"""


class TaskKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def tokens(self, task: str) -> str:
        return f"{self.prefix}:tasks:{task}:tokens"

    def pools(self, task: str) -> str:
        return f"{self.prefix}:tasks:{task}:pools"

    def rate(self, task: str) -> str:
        return f"{self.prefix}:tasks:{task}:rate"


class Tokens:
    """The scripts, on one connection (the governor's)."""

    def __init__(self, client: Any, keys: TaskKeys) -> None:
        self.client, self.keys = client, keys
        self._hold = client.register_script(HOLD)
        self._release = client.register_script(RELEASE)
        self._reserve = client.register_script(RESERVE)

    def hold(self, task: str, limit: int, pool: str, members: list[str]) -> tuple[set[str], list[str]]:
        """Renew or take tokens for MEMBERS (in order, while there are any):
        (the members holding one now, the pools that serve TASK)."""
        held, pools = self._hold(keys=[self.keys.tokens(task), self.keys.pools(task)],
                                 args=[limit, TOKEN_TTL_MS, pool, *members])
        return {_text(m) for m in held}, sorted(_text(p) for p in pools)

    def release(self, task: str, members: list[str]) -> None:
        if members:
            self._release(keys=[self.keys.tokens(task)], args=members)


    def reserve(self, task: str, per_second: float, count: int, pool: str) -> tuple[list[float], list[str]]:
        """COUNT permits of TASK: (in how many seconds each may start, the pools that serve TASK)."""
        now, times, pools = self._reserve(keys=[self.keys.rate(task), self.keys.pools(task)],
                                          args=[round(1e6 / per_second), count, pool, TOKEN_TTL_MS])
        return [(int(at) - int(now)) / 1e6 for at in times], sorted(_text(p) for p in pools)


class LocalPermits:
    """Start permits while Redis is away: this pool's share of the rate (the
    rate split evenly over the pools last seen serving the task), on this
    host's clock."""

    def __init__(self, fleet: dict[str, list[str]]) -> None:
        self.fleet = fleet  # task -> the pools last seen serving it (the governor's)
        self.next_at: dict[str, float] = {}

    def reserve(self, task: str, per_second: float, count: int, pool: str) -> tuple[list[float], list[str]]:
        now = time.monotonic()
        fleet = self.fleet.get(task, [])
        interval = max(1, len(fleet)) / per_second
        at = max(now, self.next_at.get(task, 0.0))
        self.next_at[task] = at + count * interval
        return [at + i * interval - now for i in range(count)], fleet


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def share(limit: int, pools: list[str], pool: str) -> int:
    """This pool's part of LIMIT while Redis is away: LIMIT split evenly
    over the pools last seen serving the task (sorted by name, the first
    ones take the remainder), so that the shares add up to LIMIT. A pool
    that never saw the others takes one."""
    if pool not in pools:
        return min(limit, 1)
    base, extra = divmod(limit, len(pools))
    return base + (1 if pools.index(pool) < extra else 0)
