"""What the control channel keeps in Redis, and where.

Pub/sub is only the nudge; the durable truth is in keys, so that a pool
that was cut off, restarted or scaled up catches up on reconnect:

    PREFIX:exit:SCOPE     the last exit command for SCOPE (its signed message)
    PREFIX:data:SCOPE     hash KEY -> the set command that set it
    PREFIX:pool:HOST:NAME heartbeat of a live pool (JSON, with a TTL)

A SCOPE is ``all``, ``host:H``, ``pool:P`` or ``host:H:pool:P``; a pool
reads the four that concern it, the more specific winning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import redis

from .messages import BadMessage, Command, decode

log = logging.getLogger("gearman_workers.control")


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def exit(self, scope: str) -> str:
        return f"{self.prefix}:exit:{scope}"

    def data(self, scope: str) -> str:
        return f"{self.prefix}:data:{scope}"

    def heartbeat(self, host: str, pool: str) -> str:
        return f"{self.prefix}:pool:{host}:{pool}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}:pool:*"


def pool_scopes(hostname: str, pool: str) -> list[str]:
    """The scopes that concern one pool, least specific first."""
    return ["all", f"host:{hostname}", f"pool:{pool}", f"host:{hostname}:pool:{pool}"]


def command_scopes(hosts: Iterable[str], pool: str | None) -> list[str]:
    """Where a command aimed at HOSTS and POOL is recorded."""
    hosts = list(hosts)
    if not hosts:
        return [f"pool:{pool}"] if pool else ["all"]
    return [f"host:{h}:pool:{pool}" if pool else f"host:{h}" for h in hosts]


def _decode_stored(raw: bytes, secret: bytes | None, where: str) -> Command | None:
    try:
        return decode(raw, secret)
    except BadMessage as err:
        log.warning("ignoring %s: %s", where, err)
        return None


def latest_exit(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                secret: bytes | None) -> Command | None:
    names = [keys.exit(scope) for scope in pool_scopes(hostname, pool)]
    found = [_decode_stored(raw, secret, name) for name, raw in zip(names, client.mget(names), strict=True)
             if raw is not None]
    stamped = [c for c in found if c is not None and c.ts is not None]
    return max(stamped, key=lambda c: c.ts or 0.0, default=None)


def load_data(client: redis.Redis, keys: Keys, hostname: str, pool: str,
              secret: bytes | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for scope in pool_scopes(hostname, pool):
        for field, raw in client.hgetall(keys.data(scope)).items():
            command = _decode_stored(raw, secret, f"data {field!r} in scope {scope}")
            if command is not None and command.cmd == "set" and command.key == field.decode():
                values[command.key] = command.value
    return values


def write_heartbeat(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                    info: dict[str, Any], ttl: int) -> None:
    client.set(keys.heartbeat(hostname, pool), json.dumps(info | {"host": hostname, "name": pool}), ex=ttl)


def clear_heartbeat(client: redis.Redis, keys: Keys, hostname: str, pool: str, pid: int) -> None:
    key = keys.heartbeat(hostname, pool)
    raw = client.get(key)
    if raw is not None and json.loads(raw).get("pid") == pid:
        client.delete(key)


def live_pools(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    names = sorted(client.scan_iter(match=keys.heartbeat_pattern, count=500))
    pools = []
    for raw in client.mget(names) if names else []:
        if raw is not None:
            try:
                pools.append(json.loads(raw))
            except ValueError:
                continue
    return pools
