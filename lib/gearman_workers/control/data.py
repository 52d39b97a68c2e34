"""Runtime data as a pool has accepted it: for each scope and key, the
newest set or del command (by its timestamp, which the signature covers).

An older command never replaces a newer one, so a signed value captured
long ago and written back into Redis cannot roll a key back. The book is
kept in the pool's state directory, so a restarted pool remembers what it
had (a reboot, which empties /run, forgets). A key vanishing from Redis
changes nothing: only a (signed) del removes a value.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .. import state
from .messages import Command
from .store import pool_scopes

log = logging.getLogger("gearman_workers.control")

BOOK_VERSION = 1


class DataBook:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        # (scope, key) -> (timestamp, "set" or "del", value)
        self.entries: dict[tuple[str, str], tuple[float, str, Any]] = {}
        if path is not None:
            self._load(path)

    def offer(self, scope: str, command: Command) -> bool:
        """Take COMMAND unless a newer one for its key is held; True when
        the book changed."""
        assert command.key is not None
        ts = command.ts or 0.0
        held = self.entries.get((scope, command.key))
        if held is not None and ts < held[0]:
            log.warning("ignoring %s %s in scope %s: older than the one applied (rolled back?)",
                        command.cmd, command.key, scope)
            return False
        entry = (ts, command.cmd, command.value if command.cmd == "set" else None)
        if held == entry:
            return False
        self.entries[scope, command.key] = entry
        return True

    def values(self, hostname: str, pool: str) -> dict[str, Any]:
        """The data this pool's tasks see: per key, the value set in the
        most specific scope that has one."""
        values: dict[str, Any] = {}
        for scope in pool_scopes(hostname, pool):
            for (where, key), (_, cmd, value) in sorted(self.entries.items()):
                if where == scope and cmd == "set":
                    values[key] = value
        return values

    def save(self) -> None:
        if self.path is None:
            return
        rows = [[scope, key, ts, cmd, value] for (scope, key), (ts, cmd, value) in sorted(self.entries.items())]
        try:
            state.atomic_write(self.path, json.dumps({"version": BOOK_VERSION, "entries": rows}))
        except OSError as err:  # the values still reach the children; only the memory of them is lost
            log.error("cannot save the runtime data book %s: %s", self.path, err)

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != BOOK_VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            for scope, key, ts, cmd, value in raw["entries"]:
                self.entries[str(scope), str(key)] = (float(ts), str(cmd), value)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
            log.warning("runtime data book %s is unreadable (%s); starting from Redis alone", path, err)
            self.entries.clear()
