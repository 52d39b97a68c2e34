"""set and del: runtime data that reaches task code live, and the book of
what a pool has accepted.

Sent by `gm-ctl set KEY VALUE` and `gm-ctl del KEY` (with --host/--pool).
Kept: per scope, a hash PREFIX:data:SCOPE of KEY -> the last set or del of
KEY (a del stays as a signed tombstone). The message is only a nudge: a
pool that accepts one reads the hashes of its four scopes again, and its
tasks see, per key, the value of the most specific scope that has one. A
key needs 1 to 256 characters; a set needs a value (JSON, null included).

The book: runtime data as a pool has accepted it, for each scope and key the
newest set or del command (by its timestamp, which the signature covers).

An older command never replaces a newer one, so a signed value captured
long ago and written back into Redis cannot roll a key back. The book is
kept in the pool's state directory, so a restarted pool remembers what it
had (a reboot, which empties /run, forgets). A key vanishing from Redis
changes nothing: only a (signed) del removes a value.

The book keeps each command as the message that carried it, signature and
all, and checks every one again when it is read back: the file is only a
memory of what Redis said, and gets no more trust than Redis does. It is
read only as a regular file, and only once the state directory passed the
master's trust check (the listener loads it when it starts).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import redis

from .. import files
from .command import Pool
from .messages import BadMessage, Message, encode
from .store import KeptByKey, Keys, kept_by_key, pool_scopes, read_stored

log = logging.getLogger("gearman_workers.control")

BOOK_VERSION = 2  # 1 kept values without their signatures: not trusted, not read
MAX_BOOK = 64 * 1024 * 1024
MAX_KEY = 256


class DataCommand(KeptByKey):
    """set or del: the same key, the same record, the same nudge."""

    def __init__(self, name: str, takes_value: bool) -> None:
        self.name, self.takes_value = name, takes_value

    def check(self, message: Message) -> None:
        if not message.key or len(message.key) > MAX_KEY:
            raise BadMessage(f"{self.name} needs a key of 1 to {MAX_KEY} characters")
        if self.takes_value and not message.carries_value:
            raise BadMessage(f"{self.name} needs a value")

    def hash(self, keys: Keys, scope: str) -> str:
        return keys.data(scope)

    def apply(self, pool: Pool, message: Message) -> None:
        pool.reload_data()

    def describe(self, message: Message) -> str:
        return f"{self.name} {message.key}"


SET = DataCommand("set", takes_value=True)
DEL = DataCommand("del", takes_value=False)


def set_message(key: str, value: Any, hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    return Message(SET.name, key=key, value=value, hosts=hosts, pool=pool, carries_value=True)


def del_message(key: str, hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    return Message(DEL.name, key=key, hosts=hosts, pool=pool)


def stored(client: redis.Redis, keys: Keys, hostname: str, pool: str,
           secret: bytes | None) -> list[tuple[str, Message, bytes]]:
    """Every stored set and del that concerns this pool: scope, message, and
    the bytes that carried it."""
    return kept_by_key(client, keys, hostname, pool, secret, "data", SET, DEL)


class DataBook:
    def __init__(self, path: Path | None = None, secret: bytes | None = None) -> None:
        self.path = path
        self.secret = secret
        # (scope, key) -> (timestamp, set or del, value, the message that said so)
        self.entries: dict[tuple[str, str], tuple[float, str, Any, bytes]] = {}

    def offer(self, scope: str, message: Message, raw: bytes | None = None) -> bool:
        """Take MESSAGE (carried by RAW) unless a newer one for its key is
        held; True when the book changed."""
        assert message.key is not None
        ts = message.ts or 0.0
        held = self.entries.get((scope, message.key))
        if held is not None and ts < held[0]:
            log.warning("ignoring %s %s in scope %s: older than the one applied (rolled back?)",
                        message.cmd, message.key, scope)
            return False
        entry = (ts, message.cmd, message.value if message.cmd == SET.name else None,
                 raw if raw is not None else encode(message, None))
        if held is not None and held[:3] == entry[:3]:
            return False
        self.entries[scope, message.key] = entry
        return True

    def values(self, hostname: str, pool: str) -> dict[str, Any]:
        """The data this pool's tasks see: per key, the value set in the
        most specific scope that has one."""
        values: dict[str, Any] = {}
        for scope in pool_scopes(hostname, pool):
            for (where, key), (_, cmd, value, _) in sorted(self.entries.items()):
                if where == scope and cmd == SET.name:
                    values[key] = value
        return values

    def save(self) -> None:
        if self.path is None:
            return
        rows = [[scope, entry[3].decode("utf-8")] for (scope, _), entry in sorted(self.entries.items())]
        try:
            files.atomic_write(self.path, json.dumps({"version": BOOK_VERSION, "entries": rows}))
        except OSError as err:  # the values still reach the children; only the memory of them is lost
            log.error("cannot save the runtime data book %s: %s", self.path, err)

    def load(self) -> None:
        """Read the book back, keeping only commands that pass every check a
        message from Redis passes."""
        if self.path is None:
            return
        try:
            raw = json.loads(read_regular_file(self.path))
            if not isinstance(raw, dict) or raw.get("version") != BOOK_VERSION:
                raise ValueError(f"unknown version {raw.get('version') if isinstance(raw, dict) else raw!r}")
            for scope, message in raw["entries"]:
                self._reread(str(scope), str(message).encode("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
            log.warning("runtime data book %s is unreadable (%s); starting from Redis alone", self.path, err)
            self.entries.clear()

    def _reread(self, scope: str, raw: bytes) -> None:
        message = read_stored(raw, self.secret, scope, f"an entry of {self.path} in scope {scope}", SET, DEL)
        if message is not None:
            self.offer(scope, message, raw)


def read_regular_file(path: Path) -> str:
    """PATH's text, if it is a regular file: not through a symbolic link, and
    never blocking on a FIFO or a device planted there."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_BOOK:
            raise ValueError(f"{info.st_size} bytes, more than a book holds")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_BOOK + 1).decode("utf-8")
    finally:
        os.close(fd)
