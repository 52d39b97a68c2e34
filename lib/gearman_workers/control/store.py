"""Where the control channel keeps things in Redis, and the records every
command shares (what each command keeps is said in its own module).

Pub/sub is only the nudge; the durable truth is in keys, so that a pool
that was cut off, restarted or scaled up catches up on reconnect:

    PREFIX:exit:SCOPE     the last exit command for SCOPE (its signed message; exit.py)
    PREFIX:data:SCOPE     hash KEY -> the last set or del command for KEY
                          (a del is kept as a signed tombstone, not removed; data.py)
    PREFIX:pause:SCOPE    hash TASK -> the last pause or resume of TASK (pause.py)
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
from typing import Any, Protocol

import redis

from ..config import NAME_RE
from .messages import BadMessage, Message, decode

log = logging.getLogger("gearman_workers.control")


class Checks(Protocol):
    """What read_stored needs of a command (command.py)."""

    name: str

    def check(self, message: Message) -> None: ...


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def exit(self, scope: str) -> str:
        return f"{self.prefix}:exit:{scope}"

    def data(self, scope: str) -> str:
        return f"{self.prefix}:data:{scope}"

    def pause(self, scope: str) -> str:
        return f"{self.prefix}:pause:{scope}"

    def heartbeat(self, host: str, pool: str) -> str:
        return f"{self.prefix}:pool:{host}:{pool}"

    def nonce(self, host: str, pool: str, nonce: str) -> str:
        return f"{self.prefix}:nonce:{host}:{pool}:{nonce}"

    def ack(self, host: str, pool: str, nonce: str) -> str:
        return f"{self.prefix}:ack:{host}:{pool}:{nonce}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}:pool:*"

    def pool_of(self, heartbeat_key: bytes) -> tuple[str, str] | None:
        """(host, pool) a heartbeat key names, if both are valid names."""
        rest = heartbeat_key.decode("ascii", "replace").removeprefix(f"{self.prefix}:pool:")
        host, _, pool = rest.partition(":")
        return (host, pool) if NAME_RE.match(host) and NAME_RE.match(pool) else None


class NotKept:
    """A command that is for the pools listening now (scale, cancel, dead):
    nothing of it is kept, so there is nothing to read back or put back."""

    def record(self, pipe: Any, keys: Keys, scope: str, message: Message, raw: bytes) -> None:
        """Not kept."""

    def recorded(self, client: Any, keys: Keys, scope: str, message: Message) -> bytes | None:
        return None

    def restore(self, client: Any, keys: Keys, scope: str, message: Message, raw: bytes | None) -> None:
        """Nothing was kept."""


class KeptByKey:
    """What a command kept per scope in a hash, field = its key, does to
    keep itself (set/del in data.py, pause/resume in pause.py): `hash`
    names the hash of a scope."""

    def hash(self, keys: Keys, scope: str) -> str:
        raise NotImplementedError

    def record(self, pipe: Any, keys: Keys, scope: str, message: Message, raw: bytes) -> None:
        pipe.hset(self.hash(keys, scope), message.key, raw)

    def recorded(self, client: Any, keys: Keys, scope: str, message: Message) -> bytes | None:
        return client.hget(self.hash(keys, scope), message.key)

    def restore(self, client: Any, keys: Keys, scope: str, message: Message, raw: bytes | None) -> None:
        if raw is None:
            client.hdel(self.hash(keys, scope), message.key)
        else:
            client.hset(self.hash(keys, scope), message.key, raw)


def kept_by_key(client: redis.Redis, keys: Keys, hostname: str, pool: str, secret: bytes | None,
                what: str, *commands: Any) -> list[tuple[str, Message, bytes]]:
    """Every message of COMMANDS (KeptByKey, one hash) kept for this pool:
    scope, message, and the bytes that carried it. One in a field its own
    key does not name is ignored, like one in a scope it does not name."""
    found = []
    for scope in pool_scopes(hostname, pool):
        for field, raw in client.hgetall(commands[0].hash(keys, scope)).items():
            name = raw_reply(field).decode("utf-8", "replace")
            message = read_stored(raw, secret, scope, f"{what} {name!r} in scope {scope}", *commands)
            if message is not None and message.key == name:
                found.append((scope, message, raw_reply(raw)))
    return found


def pool_scopes(hostname: str, pool: str) -> list[str]:
    """The scopes that concern one pool, least specific first."""
    return ["all", f"host:{hostname}", f"pool:{pool}", f"host:{hostname}:pool:{pool}"]


def command_scopes(hosts: Iterable[str], pool: str | None) -> list[str]:
    """Where a command aimed at HOSTS and POOL is recorded."""
    hosts = list(hosts)
    if not hosts:
        return [f"pool:{pool}"] if pool else ["all"]
    return [f"host:{h}:pool:{pool}" if pool else f"host:{h}" for h in hosts]


def raw_reply(value: bytes | str) -> bytes:
    """A Redis reply as bytes: our clients never decode replies, but
    redis-py's types allow str."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def read_stored(raw: bytes | str, secret: bytes | None, scope: str, where: str,
                *kept: Checks) -> Message | None:
    """A stored message of one of the commands KEPT there, or None (and a
    warning) for anything else: unreadable, another command's, or copied to
    a scope its own signed targets do not name."""
    try:
        message = decode(raw_reply(raw), secret)
        command = next((c for c in kept if c.name == message.cmd), None)
        if command is None:
            raise BadMessage(f"a {message.cmd!r} message where {' or '.join(c.name for c in kept)} is kept")
        command.check(message)
    except BadMessage as err:
        log.warning("ignoring %s: %s", where, err)
        return None
    if scope not in command_scopes(message.hosts, message.pool):
        log.warning("ignoring %s: a command aimed at %s stored under %s", where,
                    ", ".join(command_scopes(message.hosts, message.pool)), scope)
        return None
    return message


def write_heartbeat(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                    info: dict[str, Any], ttl: int) -> None:
    # SETEX, not SET: a pool's Redis user may run only commands whose keys
    # expire, so a stolen pool password cannot fill Redis for good.
    client.setex(keys.heartbeat(hostname, pool), ttl, json.dumps(info | {"host": hostname, "name": pool}))


def other_writer(client: redis.Redis, keys: Keys, hostname: str, pool: str, pid: int, after: float) -> int | None:
    """The PID of another master that wrote this pool's heartbeat since
    AFTER (our last write): two live masters with one host and pool name.
    A dead master's last heartbeat, older than ours, is no one."""
    found = _heartbeat(client.get(keys.heartbeat(hostname, pool)))
    other, reported = found.get("pid"), found.get("reported")
    if isinstance(other, int) and other != pid and isinstance(reported, (int, float)) and reported > after:
        return other
    return None


def remember_nonce(client: redis.Redis, keys: Keys, hostname: str, pool: str, nonce: str, ttl: int) -> bool:
    """True the first time this pool records NONCE. A read, then SETEX (the
    pool user has no SET, whose expiry is optional): safe without atomicity,
    since only the one listener of this pool writes its nonces."""
    key = keys.nonce(hostname, pool, nonce)
    if client.get(key) is not None:
        return False
    client.setex(key, ttl, b"1")
    return True


def clear_heartbeat(client: redis.Redis, keys: Keys, hostname: str, pool: str, pid: int) -> None:
    key = keys.heartbeat(hostname, pool)
    if _heartbeat(client.get(key)).get("pid") == pid:
        client.delete(key)


def _heartbeat(raw: bytes | str | None) -> dict[str, Any]:
    """A stored heartbeat, or {} for anything that is not one."""
    try:
        info = json.loads(raw) if raw is not None else {}
    except (ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


_NUMBER = (int, float)
# What gm-ctl reads of a heartbeat, with the types a master writes (master.summary).
POOL_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int,), "desired": (int,), "registered": (int,), "started": _NUMBER, "reported": _NUMBER,
    "autoscale": (dict, type(None)), "children": (list,), "duplicate_of": (int, type(None)),
    "paused": (list, type(None))}
CHILD_TYPES: dict[str, tuple[type, ...]] = {
    "slot": (int,), "pid": (int,), "state": (str,), "dedicated_to": (str, type(None)), "task": (str, type(None)),
    "job": (str, type(None)), "busy_for": (*_NUMBER, type(None)), "jobs_done": (int,), "jobs_failed": (int,),
    "rss": (int, type(None)), "age": _NUMBER}


def _well_typed(row: dict[str, Any], types: dict[str, tuple[type, ...]]) -> bool:
    return all(isinstance(row.get(key), kinds) and not isinstance(row.get(key), bool) for key, kinds in types.items())


def _bound_to_key(info: dict[str, Any], host: str, pool: str) -> bool:
    """A heartbeat counts only for the pool its key names, and only in the
    shape a master writes: a pool user who may write its own key cannot
    speak for another pool, nor feed gm-ctl what it cannot read."""
    return (info.get("host") == host and info.get("name") == pool and _well_typed(info, POOL_TYPES)
            and all(isinstance(c, dict) and _well_typed(c, CHILD_TYPES) for c in info["children"]))


def live_pools(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    names = sorted(client.scan_iter(match=keys.heartbeat_pattern, count=500))
    pools, refused = [], []
    for name, raw in zip(names, client.mget(names) if names else [], strict=True):
        where = keys.pool_of(name)
        info = _heartbeat(raw)
        if where is not None and info and _bound_to_key(info, *where):
            pools.append(info)
        elif raw is not None:
            refused.append(name.decode("ascii", "backslashreplace"))
    if refused:
        log.warning("ignoring %d heartbeat(s) that disagree with their key or are malformed: %s", len(refused),
                    ", ".join(repr(name) for name in refused[:5]))
    return pools
