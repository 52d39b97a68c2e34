"""Runtime data as a pool has accepted it: for each scope and key, the
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

from .. import state
from .messages import BadMessage, Command, decode, encode
from .store import command_scopes, pool_scopes

log = logging.getLogger("gearman_workers.control")

BOOK_VERSION = 2  # 1 kept values without their signatures: not trusted, not read
MAX_BOOK = 64 * 1024 * 1024


class DataBook:
    def __init__(self, path: Path | None = None, secret: bytes | None = None) -> None:
        self.path = path
        self.secret = secret
        # (scope, key) -> (timestamp, "set" or "del", value, the message that said so)
        self.entries: dict[tuple[str, str], tuple[float, str, Any, bytes]] = {}

    def offer(self, scope: str, command: Command, message: bytes | None = None) -> bool:
        """Take COMMAND (carried by MESSAGE) unless a newer one for its key
        is held; True when the book changed."""
        assert command.key is not None
        ts = command.ts or 0.0
        held = self.entries.get((scope, command.key))
        if held is not None and ts < held[0]:
            log.warning("ignoring %s %s in scope %s: older than the one applied (rolled back?)",
                        command.cmd, command.key, scope)
            return False
        entry = (ts, command.cmd, command.value if command.cmd == "set" else None,
                 message if message is not None else encode(command, None))
        if held is not None and held[:3] == entry[:3]:
            return False
        self.entries[scope, command.key] = entry
        return True

    def values(self, hostname: str, pool: str) -> dict[str, Any]:
        """The data this pool's tasks see: per key, the value set in the
        most specific scope that has one."""
        values: dict[str, Any] = {}
        for scope in pool_scopes(hostname, pool):
            for (where, key), (_, cmd, value, _) in sorted(self.entries.items()):
                if where == scope and cmd == "set":
                    values[key] = value
        return values

    def save(self) -> None:
        if self.path is None:
            return
        rows = [[scope, entry[3].decode("utf-8")] for (scope, _), entry in sorted(self.entries.items())]
        try:
            state.atomic_write(self.path, json.dumps({"version": BOOK_VERSION, "entries": rows}))
        except OSError as err:  # the values still reach the children; only the memory of them is lost
            log.error("cannot save the runtime data book %s: %s", self.path, err)

    def load(self) -> None:
        """Read the book back, keeping only commands that pass every check a
        message from Redis passes."""
        if self.path is None:
            return
        try:
            raw = json.loads(_read_regular_file(self.path))
            if not isinstance(raw, dict) or raw.get("version") != BOOK_VERSION:
                raise ValueError(f"unknown version {raw.get('version') if isinstance(raw, dict) else raw!r}")
            for scope, message in raw["entries"]:
                self._reread(str(scope), str(message).encode("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
            log.warning("runtime data book %s is unreadable (%s); starting from Redis alone", self.path, err)
            self.entries.clear()

    def _reread(self, scope: str, message: bytes) -> None:
        try:
            command = decode(message, self.secret)
        except BadMessage as err:
            log.warning("runtime data book %s: dropping an entry of scope %s: %s", self.path, scope, err)
            return
        if command.cmd in ("set", "del") and scope in command_scopes(command.hosts, command.pool):
            self.offer(scope, command, message)


def _read_regular_file(path: Path) -> str:
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
