"""exit: finish the jobs in hand and stop (under systemd the pool then comes
back, with the code on disk).

Sent by `gm-exit [--host H] [--pool P]`. Kept: the latest exit of each
scope, under PREFIX:exit:SCOPE, so that a pool cut off from Redis when it
was published obeys it when it reconnects (`catch_up`). A pool obeys an
exit aimed at it that passes the listener's checks (signed, fresh, not
replayed, and stamped after the pool started); it refuses any other."""

from __future__ import annotations

from typing import Any

import redis

from ..commands import Stop
from .command import Pool
from .messages import Message
from .store import Keys, pool_scopes, read_stored

NAME = "exit"


class Exit:
    name = NAME

    def check(self, message: Message) -> None:
        """An exit takes nothing but its targets."""

    def record(self, pipe: Any, keys: Keys, scope: str, message: Message, raw: bytes) -> None:
        pipe.set(keys.exit(scope), raw)

    def recorded(self, client: Any, keys: Keys, scope: str, message: Message) -> bytes | None:
        return client.get(keys.exit(scope))

    def restore(self, client: Any, keys: Keys, scope: str, message: Message, raw: bytes | None) -> None:
        if raw is None:
            client.delete(keys.exit(scope))
        else:
            client.set(keys.exit(scope), raw)

    def apply(self, pool: Pool, message: Message) -> None:
        pool.submit(Stop("exit command"))

    def describe(self, message: Message) -> str:
        return NAME


EXIT = Exit()


def message(hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    return Message(NAME, hosts=hosts, pool=pool)


def latest_stored(client: redis.Redis, keys: Keys, hostname: str, pool: str,
                  secret: bytes | None) -> Message | None:
    """The newest stored exit that concerns this pool."""
    scopes = pool_scopes(hostname, pool)
    names = [keys.exit(scope) for scope in scopes]
    found = [read_stored(raw, secret, scope, name, EXIT)
             for scope, name, raw in zip(scopes, names, client.mget(names), strict=True) if raw is not None]
    exits = [m for m in found if m is not None and m.ts is not None]
    return max(exits, key=lambda m: m.ts or 0.0, default=None)


def catch_up(pool: Pool, client: redis.Redis, keys: Keys, hostname: str, name: str, secret: bytes | None,
             since: float) -> None:
    """An exit published while this pool could not listen, stamped after SINCE: obey it now."""
    last = latest_stored(client, keys, hostname, name, secret)
    if last is not None and (last.ts or 0.0) > since:
        pool.submit(Stop("exit command recorded while redis was out of reach"))
