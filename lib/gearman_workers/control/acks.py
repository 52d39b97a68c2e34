"""Acknowledgements: every live pool a command is aimed at says what it did
with it, and the operator's command waits for those answers. Both halves
side by side: a pool's listener writes its answer (`answer`), gm-exit and
gm-ctl read them (`collect`).

An answer is a key per pool and message, under the pool's own host
(PREFIX:ack:HOST:POOL:NONCE, which a pool's Redis user may write, with
SETEX only), kept ANSWER_TTL seconds: {"outcome": "applied" | "refused",
"reason": one word (messages.BadMessage's reasons, or the command's own),
"detail": the text the pool logged}. A pool answers only messages aimed at
it that carry a nonce as the operator's commands make them; it does not
answer a plain `redis-cli PUBLISH channel exit`."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis

from .store import Keys, raw_reply

APPLIED, REFUSED = "applied", "refused"
ANSWER_TTL = 60
POLL_INTERVAL = 0.01  # an answer comes within milliseconds: gm-ctl returns as soon as the last one is in


@dataclasses.dataclass(frozen=True)
class Ack:
    outcome: str  # APPLIED or REFUSED
    reason: str  # one word: the command's name when applied, why when refused
    detail: str = ""

    @property
    def applied(self) -> bool:
        return self.outcome == APPLIED

    def line(self) -> str:
        if self.applied:
            return f"{APPLIED} ({self.detail})" if self.detail else APPLIED
        return f"{REFUSED} ({self.reason}: {self.detail})" if self.detail else f"{REFUSED} ({self.reason})"


def answer(client: redis.Redis, keys: Keys, host: str, pool: str, nonce: str, ack: Ack) -> None:
    """The pool's half: say what this pool did with message NONCE."""
    client.setex(keys.ack(host, pool, nonce), ANSWER_TTL, json.dumps(dataclasses.asdict(ack)))


def collect(client: redis.Redis, keys: Keys, pools: list[tuple[str, str]], nonce: str,
            timeout: float) -> dict[tuple[str, str], Ack | None]:
    """The operator's half: each (host, pool)'s answer to NONCE, waiting up
    to TIMEOUT seconds for all of them; None for a pool that did not answer."""
    found: dict[tuple[str, str], Ack | None] = dict.fromkeys(pools)
    deadline = time.monotonic() + timeout
    while True:
        waiting = [where for where, ack in found.items() if ack is None]
        if waiting:
            for where, raw in zip(waiting, client.mget([keys.ack(*w, nonce) for w in waiting]), strict=True):
                found[where] = _parsed(raw)
        if all(ack is not None for ack in found.values()) or time.monotonic() >= deadline:
            return found
        time.sleep(POLL_INTERVAL)


def _parsed(raw: Any) -> Ack | None:
    if raw is None:
        return None
    try:
        fields = json.loads(raw_reply(raw))
        return Ack(str(fields["outcome"]), str(fields["reason"]), str(fields.get("detail", "")))
    except (ValueError, KeyError, TypeError):
        return Ack(REFUSED, "unreadable-answer")
