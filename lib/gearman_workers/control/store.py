"""What the control channel keeps in Redis, and where.

Pub/sub is only the nudge; the durable truth is in keys, so that a pool
that was cut off, restarted or scaled up catches up on reconnect:

    PREFIX:exit:SCOPE     the last exit command for SCOPE (its signed message)
    PREFIX:data:SCOPE     hash KEY -> the last set or del command for KEY
                          (a del is kept as a signed tombstone, not removed)
    PREFIX:pool:HOST:NAME heartbeat of a live pool (JSON, with a TTL)
    PREFIX:nonce:HOST:NAME:NONCE  a nonce that pool has seen (expires)

A SCOPE is ``all``, ``host:H``, ``pool:P`` or ``host:H:pool:P``; a pool
reads the four that concern it, the more specific winning. A stored
command counts only under the scope its own (signed) targets name: a
command copied to another key or field is ignored.
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

    def nonce(self, host: str, pool: str, nonce: str) -> str:
        return f"{self.prefix}:nonce:{host}:{pool}:{nonce}"

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


def _decode_stored(raw: bytes, secret: bytes | None, scope: str, where: str) -> Command | None:
    try:
        command = decode(raw, secret)
    except BadMessage as err:
        log.warning("ignoring %s: %s", where, err)
        return None
    if scope not in command_scopes(command.hosts, command.pool):
        log.warning("ignoring %s: a command aimed at %s stored under %s", where,
                    ", ".join(command_scopes(command.hosts, command.pool)), scope)
        return None
    return command


def latest_exit(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                secret: bytes | None) -> Command | None:
    scopes = pool_scopes(hostname, pool)
    names = [keys.exit(scope) for scope in scopes]
    found = [_decode_stored(raw, secret, scope, name)
             for scope, name, raw in zip(scopes, names, client.mget(names), strict=True) if raw is not None]
    exits = [c for c in found if c is not None and c.cmd == "exit" and c.ts is not None]
    return max(exits, key=lambda c: c.ts or 0.0, default=None)


def stored_data(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                secret: bytes | None) -> list[tuple[str, Command]]:
    """Every stored set and del that concerns this pool, with its scope."""
    entries = []
    for scope in pool_scopes(hostname, pool):
        for field, raw in client.hgetall(keys.data(scope)).items():
            name = field.decode("utf-8", "replace")
            command = _decode_stored(raw, secret, scope, f"data {name!r} in scope {scope}")
            if command is not None and command.cmd in ("set", "del") and command.key == name:
                entries.append((scope, command))
    return entries


def write_heartbeat(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                    info: dict[str, Any], ttl: int) -> None:
    client.set(keys.heartbeat(hostname, pool), json.dumps(info | {"host": hostname, "name": pool}), ex=ttl)


def clear_heartbeat(client: redis.Redis, keys: Keys, hostname: str, pool: str, pid: int) -> None:
    key = keys.heartbeat(hostname, pool)
    if _heartbeat(client.get(key)).get("pid") == pid:
        client.delete(key)


def _heartbeat(raw: bytes | None) -> dict[str, Any]:
    """A stored heartbeat, or {} for anything that is not one."""
    try:
        info = json.loads(raw) if raw is not None else {}
    except (ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def live_pools(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    names = sorted(client.scan_iter(match=keys.heartbeat_pattern, count=500))
    return [info for info in map(_heartbeat, client.mget(names) if names else []) if info]
