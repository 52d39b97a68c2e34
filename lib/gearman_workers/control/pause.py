"""pause and resume: stop offering a task to gearmand fleet-wide, and offer
it again. Jobs in hand finish; other tasks are untouched; a job submitted
meanwhile waits in gearmand.

Sent by `gm-ctl pause TASK` and `gm-ctl resume TASK` (with --host/--pool).
Kept: per scope, a hash PREFIX:pause:SCOPE of TASK -> the last pause or
resume of TASK there (a resume stays, as a tombstone). Of everything kept
for a task in the four scopes that concern a pool, the newest command
(by its timestamp, which gm-ctl always sets and the signature covers)
decides: `pause T` then `resume T --host H` leaves T running on H only;
`resume T` later runs it everywhere again.

A pool keeps what it last applied in its state directory (the pause book),
so that a pool started or restarted while Redis is away still withholds
what was paused; a pool started while its Redis answers reads the hashes
before its first child is forked, and never registers a paused task.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import redis

from .. import files
from .command import Pool
from .data import read_regular_file
from .messages import BadMessage, Message
from .store import KeptByKey, Keys, kept_by_key, read_stored

log = logging.getLogger("gearman_workers.control")

MAX_TASK = 256
BOOK_VERSION = 1


class PauseCommand(KeptByKey):
    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, message: Message) -> None:
        if not message.key or len(message.key) > MAX_TASK:
            raise BadMessage(f"{self.name} needs a task name of 1 to {MAX_TASK} characters")
        if message.ts is None:
            raise BadMessage(f"{self.name} needs a timestamp (ts): the newest pause or resume wins")

    def hash(self, keys: Keys, scope: str) -> str:
        return keys.pause(scope)

    def apply(self, pool: Pool, message: Message) -> str:
        assert message.key is not None
        paused = pool.reload_pauses()
        state = "paused" if message.key in paused else "running"
        return f"{message.key} {state} here" + ("" if pool.serves(message.key) else " (not a task of this pool)")

    def describe(self, message: Message) -> str:
        return f"{self.name} {message.key}"


PAUSE = PauseCommand("pause")
RESUME = PauseCommand("resume")


def message(name: str, task: str, hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    """A pause or resume, stamped now even without a secret (the newest wins)."""
    return Message(name, key=task, hosts=hosts, pool=pool, ts=time.time())


def stored(client: redis.Redis, keys: Keys, hostname: str, pool: str,
           secret: bytes | None) -> list[tuple[str, Message, bytes]]:
    """Every pause and resume kept for this pool: scope, message, its bytes."""
    return kept_by_key(client, keys, hostname, pool, secret, "pause state of", PAUSE, RESUME)


class PauseBook:
    """What this pool last applied: (scope, task) -> the command, as signed."""

    def __init__(self, path: Path | None, secret: bytes | None) -> None:
        self.path, self.secret = path, secret
        self.entries: dict[tuple[str, str], tuple[Message, bytes]] = {}

    def replace(self, found: list[tuple[str, Message, bytes]]) -> None:
        """What Redis holds now, kept on disk when it differs."""
        entries = {(scope, str(kept.key)): (kept, raw) for scope, kept, raw in found}
        if {k: v[1] for k, v in entries.items()} != {k: v[1] for k, v in self.entries.items()}:
            self.entries = entries
            self._save()

    def paused(self) -> frozenset[str]:
        """The tasks whose newest pause or resume is a pause."""
        newest: dict[str, Message] = {}
        for (_, task), (kept, _) in self.entries.items():
            if task not in newest or (kept.ts or 0.0) > (newest[task].ts or 0.0):
                newest[task] = kept
        return frozenset(task for task, kept in newest.items() if kept.cmd == PAUSE.name)

    def _save(self) -> None:
        if self.path is None:
            return
        rows = [[scope, raw.decode("utf-8")] for (scope, _), (_, raw) in sorted(self.entries.items())]
        try:
            files.atomic_write(self.path, json.dumps({"version": BOOK_VERSION, "entries": rows}))
        except OSError as err:  # the pauses still apply; only the memory of them across a restart is lost
            log.error("cannot save the pause book %s: %s", self.path, err)

    def load(self) -> None:
        """Read the book back, keeping only what passes every check a command from Redis passes."""
        if self.path is None:
            return
        try:
            raw = json.loads(read_regular_file(self.path))
            if not isinstance(raw, dict) or raw.get("version") != BOOK_VERSION:
                raise ValueError("unknown version")
            for scope, text in raw["entries"]:
                data = str(text).encode("utf-8")
                kept = read_stored(data, self.secret, str(scope), f"an entry of {self.path}", PAUSE, RESUME)
                if kept is not None:
                    self.entries[str(scope), str(kept.key)] = (kept, data)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as err:
            log.warning("pause book %s is unreadable (%s); starting from Redis alone", self.path, err)
            self.entries.clear()
