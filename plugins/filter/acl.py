"""The Redis ACL rules of a host's pools (`pool_acl_rules` filter): what a
stolen pool password allows, kept to what a pool does (control/store.py).

It reads the four scopes of exit records and runtime data that can concern
a pool on HOST (all, host:HOST, pool:*, host:HOST:pool:*; a pool name is
fleet-wide, so every pool:NAME), and reads and writes only HOST's
heartbeats, nonces and answers to commands (acks): with SETEX alone, so every key it writes expires.
Other hosts' heartbeats and data stay unreadable to it."""

from __future__ import annotations

import re
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a pool's hostname (config.NAME_RE): no glob characters
POOL_COMMANDS = ("-@all +ping +hello +auth +client|setname +subscribe +unsubscribe +get +mget +hgetall "
                 "+setex +del")


def pool_acl_rules(host: str, prefix: str, channel: str) -> str:
    if not _NAME.match(host):
        raise ValueError(f"host name {host!r} cannot be a pool's (letters, digits, '.', '_', '-')")
    reads = [f"{kind}:{scope}" for kind in ("exit", "data")
             for scope in ("all", f"host:{host}", "pool:*", f"host:{host}:pool:*")]
    own = [f"pool:{host}:*", f"nonce:{host}:*", f"ack:{host}:*"]
    return " ".join(["resetchannels", f"&{channel}", "resetkeys",
                     *(f"%R~{prefix}:{key}" for key in reads), *(f"~{prefix}:{key}" for key in own),
                     POOL_COMMANDS])


def _filter(host: str, prefix: str, channel: str) -> str:
    try:
        return pool_acl_rules(host, prefix, channel)
    except ValueError as err:
        from ansible.errors import AnsibleFilterError

        raise AnsibleFilterError(str(err)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pool_acl_rules": _filter}
