"""Concurrency tokens in Redis: at most N jobs of a task at once, fleet-wide.

A token is a member of the sorted set PREFIX:tasks:TASK:tokens, scored with
the time (Redis's clock, milliseconds) at which it lapses. A pool holds
tokens for its children (member HOST/POOL/PID) and renews them while they
live; a token that is not renewed (its master killed, its host gone)
lapses within TOKEN_TTL_MS. Every pool that serves the task also keeps its
own name in PREFIX:tasks:TASK:pools, with the same expiry: the pools last
seen there decide each pool's share of N while Redis is away (governor.py).

Both keys expire as a whole too: a pool's Redis user may write only keys
that do (see the redis role's ACL).
"""

from __future__ import annotations

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


class Tokens:
    """The scripts, on one connection (the governor's)."""

    def __init__(self, client: Any, keys: TaskKeys) -> None:
        self.client, self.keys = client, keys
        self._hold = client.register_script(HOLD)
        self._release = client.register_script(RELEASE)

    def hold(self, task: str, limit: int, pool: str, members: list[str]) -> tuple[set[str], list[str]]:
        """Renew or take tokens for MEMBERS (in order, while there are any):
        (the members holding one now, the pools that serve TASK)."""
        held, pools = self._hold(keys=[self.keys.tokens(task), self.keys.pools(task)],
                                 args=[limit, TOKEN_TTL_MS, pool, *members])
        return {_text(m) for m in held}, sorted(_text(p) for p in pools)

    def release(self, task: str, members: list[str]) -> None:
        if members:
            self._release(keys=[self.keys.tokens(task)], args=members)


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
