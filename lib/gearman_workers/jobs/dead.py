"""dead: retry or purge dead letters (`gm-ctl dead retry|purge`).

Reading them (`gm-ctl dead list|show`) is the operator's own Redis read.
Changing them is a signed command like every other: gm-ctl aims it at one
live pool (the jobs leader when there is one), which checks it as it checks
any message and changes the letters in Redis (store.py's scripts). Not
kept: a change is for now, done by the pool that answers.

The message: key "retry" or "purge"; value {"ids": [ID, ...]} or
{"all": true, "task": T or null, "older_than": seconds or null}.
"""

from __future__ import annotations

from typing import Any

from ..control.command import Pool
from ..control.messages import BadMessage, Message
from ..control.store import NotKept
from .policy import CHAIN_ID, new_chain
from .store import JobStore

NAME = "dead"
RETRY, PURGE = "retry", "purge"
MAX_IDS = 1000


class DeadLetters(NotKept):
    name = NAME

    def check(self, message: Message) -> None:
        value = message.value
        if message.key not in (RETRY, PURGE) or not isinstance(value, dict):
            raise BadMessage("dead needs key retry or purge and a value {ids: [...]} or {all: true, ...}")
        if "ids" in value:
            ids = value["ids"]
            if not isinstance(ids, list) or not 0 < len(ids) <= MAX_IDS or not all(
                    isinstance(i, str) and CHAIN_ID.fullmatch(i) for i in ids):
                raise BadMessage(f"dead: ids must be 1 to {MAX_IDS} job ids of 16 hex digits")
        elif value.get("all") is not True:
            raise BadMessage("dead: give ids, or all: true")
        elif not isinstance(value.get("task"), (str, type(None))) or not isinstance(
                value.get("older_than"), (int, float, type(None))) or isinstance(value.get("older_than"), bool):
            raise BadMessage("dead: task must be text and older_than a number of seconds")

    def apply(self, pool: Pool, message: Message) -> str:
        store: JobStore = pool.job_store()
        value = message.value
        ids = value["ids"] if "ids" in value else [
            letter["id"] for letter in store.dead_letters(value.get("task"), value.get("older_than"))]
        if message.key == RETRY:
            done = sum(store.retry_dead(chain, new_chain()) for chain in ids)
            return f"{done} dead letter(s) due again" + _missing(len(ids) - done)
        done = sum(store.purge_dead(chain) for chain in ids)
        return f"{done} dead letter(s) purged" + _missing(len(ids) - done)

    def describe(self, message: Message) -> str:
        value = message.value or {}
        which = ", ".join(value["ids"]) if "ids" in value else (
            f"all of task {value['task']}" if value.get("task") else "all")
        return f"{NAME} {message.key} {which}"


def _missing(count: int) -> str:
    return f"; {count} not found (not dead letters, or gone already)" if count else ""


DEAD = DeadLetters()


def message(action: str, ids: list[str] | None = None, task: str | None = None, older_than: float | None = None,
            hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    value: dict[str, Any] = {"ids": ids} if ids else {"all": True, "task": task, "older_than": older_than}
    return Message(NAME, key=action, value=value, hosts=hosts, pool=pool)
