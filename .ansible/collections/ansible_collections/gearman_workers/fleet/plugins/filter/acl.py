"""The Redis ACL rules of a host's pools (`pool_acl_rules` filter): what a
stolen pool password allows, kept to what a pool does (control/store.py).

It reads the four scopes of exit records and runtime data that can concern
a pool on HOST (all, host:HOST, pool:*, host:HOST:pool:*; a pool name is
fleet-wide, so every pool:NAME), and reads and writes only HOST's
heartbeats, nonces and answers to commands (acks): with SETEX alone, so every key it writes expires.
Other hosts' heartbeats and data stay unreadable to it.

It reads the pause records of the same four scopes (control/pause.py). The
concurrency tokens (taskctl/tokens.py) are a selector of their own: every
pool holds tokens for its children through the scripts there, and may
change PREFIX:tasks:* with nothing else.

The job records (jobs/keys.py) are one selector of their own: any pool may
be the leader (the lease, the due and moving sets) and may apply a signed
dead-letter command, and every pool writes its runs' records, so each may
change PREFIX:jobs:* through the scripts of jobs/store.py and the commands
they call, and nothing else with those commands."""

from __future__ import annotations

import re
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a pool's hostname (config.NAME_RE): no glob characters
POOL_COMMANDS = ("-@all +ping +hello +auth +client|setname +client|reply +subscribe +unsubscribe +get +mget "
                 "+hgetall +setex +del +time +script|load")
TOKEN_COMMANDS = "+evalsha +eval +get +psetex +zadd +zrem +zremrangebyscore +zscore +zcard +zrange +pexpire"
JOB_COMMANDS = ("+evalsha +eval +get +set +exists +del +rename +expire +pexpire +persist +hget +hmget +hset +hdel "
                "+hgetall +hincrby +zadd +zrem +zrange +zrangebyscore +zcard")


def pool_acl_rules(host: str, prefix: str, channel: str) -> str:
    if not _NAME.match(host):
        raise ValueError(f"host name {host!r} cannot be a pool's (letters, digits, '.', '_', '-')")
    reads = [f"{kind}:{scope}" for kind in ("exit", "data", "pause")
             for scope in ("all", f"host:{host}", "pool:*", f"host:{host}:pool:*")]
    own = [f"pool:{host}:*", f"nonce:{host}:*", f"ack:{host}:*"]
    return " ".join(["resetchannels", f"&{channel}", "resetkeys",
                     *(f"%R~{prefix}:{key}" for key in reads), *(f"~{prefix}:{key}" for key in own),
                     POOL_COMMANDS, f"(~{prefix}:jobs:* {JOB_COMMANDS})", f"(~{prefix}:tasks:* {TOKEN_COMMANDS})"])


def _filter(host: str, prefix: str, channel: str) -> str:
    try:
        return pool_acl_rules(host, prefix, channel)
    except ValueError as err:
        from ansible.errors import AnsibleFilterError

        raise AnsibleFilterError(str(err)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pool_acl_rules": _filter}
