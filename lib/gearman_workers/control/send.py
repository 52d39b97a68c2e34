"""Sending an operator's command and reporting what the pools did with it:
the one path gm-exit and every sending gm-ctl subcommand take.

1. Never replace a stored record that the pools accept with one they would
   ignore: a well-signed record there must verify with our secret (and
   without a secret, there must be none); else nothing is sent.
2. Stamp (Redis's clock), sign, keep (where the command keeps it), publish.
3. Wait up to the timeout for every live pool the command is aimed at to
   answer (acks.py), and print one line per pool. When the pools refused
   the signature and none applied it, put back what was kept before: a
   record no pool reads must not stay where the right secret's goes.

The exit status: 0 when every targeted live pool applied it; 1 when one
refused or did not answer, or when no live pool was aimed at (a kept
record still waits for the pools that start later)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import redis

from . import acks, registry, store
from .messages import BadMessage, Message, decode, encode, new_nonce

EXIT_OK, EXIT_FAILED = 0, 1
# Refusals that say the pool and the sender do not share a secret.
UNVERIFIED = ("bad-signature", "unsigned")


@dataclasses.dataclass
class Sender:
    client: redis.Redis
    channel: str
    keys: store.Keys
    secret: bytes | None
    timeout: float
    force: bool = False  # replace a stored record even when ours could not be told apart from it

    def send(self, message: Message) -> int:
        """Steps 1 to 3 above; raises StoredRecordRefused at step 1."""
        live, sent, raw, previous, answers = self._ask(message)
        self.print_answers(answers)
        if not live:
            print("no live pool is aimed at" + ("; kept for the pools that start later" if self._kept(sent) else ""))
        unverified = any(ack is not None and ack.reason in UNVERIFIED for ack in answers.values())
        if unverified and not any(ack is not None and ack.applied for ack in answers.values()):
            self._put_back(sent, raw, previous)
            print("pools refused the signature: give the secret they use (--secret-file, or [control] "
                  "secret_file); without one, only pools started with allow_unsigned accept a command. "
                  "What was kept before is kept again")
        return EXIT_OK if live and all(ack is not None and ack.applied for ack in answers.values()) else EXIT_FAILED

    def ask(self, message: Message) -> dict[tuple[str, str], acks.Ack | None]:
        """Send MESSAGE (it keeps nothing) and return the answers, printing none."""
        return self._ask(message)[4]

    def print_answers(self, answers: Mapping[tuple[str, str], acks.Ack | None]) -> None:
        for (host, pool), ack in answers.items():
            print(f"{host}/{pool}: {ack.line() if ack else f'no answer within {self.timeout:g} s'}")

    def _ask(self, message: Message) -> tuple[list[tuple[str, str]], Message, bytes, dict[str, bytes | None],
                                             dict[tuple[str, str], acks.Ack | None]]:
        live = sorted((str(p.get("host")), str(p.get("name"))) for p in store.live_pools(self.client, self.keys)
                      if message.targets(str(p.get("host")), str(p.get("name"))))
        sent, raw, previous = self.publish(message)
        answers = acks.collect(self.client, self.keys, live, sent.nonce or "", self.timeout) if live else {}
        return live, sent, raw, previous, answers

    def publish(self, message: Message) -> tuple[Message, bytes, dict[str, bytes | None]]:
        """Stamp, sign, keep and publish MESSAGE: the message as sent, the
        bytes that carried it, and what was kept before it, per scope."""
        command = registry.command_of(message)
        scopes = store.command_scopes(message.hosts, message.pool)
        previous = {scope: self._check_replaceable(command, scope, message) for scope in scopes}
        seconds, micros = self.client.time()
        sent = dataclasses.replace(message, ts=seconds + micros / 1e6, nonce=new_nonce())
        raw = encode(sent, self.secret)
        with self.client.pipeline(transaction=False) as pipe:  # no MULTI: operators need no such right
            for scope in scopes:
                command.record(pipe, self.keys, scope, sent, raw)
            pipe.publish(self.channel, raw)
            pipe.execute()
        return sent, raw, previous

    def _put_back(self, sent: Message, ours: bytes, previous: dict[str, bytes | None]) -> None:
        command = registry.COMMANDS[sent.cmd]
        for scope, raw in previous.items():
            now = command.recorded(self.client, self.keys, scope, sent)
            if now is not None and store.raw_reply(now) == ours:  # nobody wrote since
                command.restore(self.client, self.keys, scope, sent, raw)

    def _kept(self, message: Message) -> bool:
        return any(registry.COMMANDS[message.cmd].recorded(self.client, self.keys, scope, message) is not None
                   for scope in store.command_scopes(message.hosts, message.pool))

    def _check_replaceable(self, command: Any, scope: str, message: Message) -> bytes | None:
        """What is kept in SCOPE now, if ours may replace it."""
        raw = command.recorded(self.client, self.keys, scope, message)
        if raw is None or self.force:
            return None if raw is None else store.raw_reply(raw)
        why = verdict(store.raw_reply(raw), self.secret)
        if why is not None:
            raise StoredRecordRefused(
                f"{command.describe(message)} in scope {scope}: the record there {why}; the pools would not "
                "accept ours either, or ours would replace one they accept. Give the secret the pools use; "
                "--force replaces it anyway")
        return store.raw_reply(raw)


class StoredRecordRefused(Exception):
    """The stored record cannot be told to be replaceable; the text says why."""


def verdict(raw: bytes, secret: bytes | None) -> str | None:
    """Why pools sharing SECRET (None: pools without one) may accept the
    stored record RAW and not one we send, or None when replacing it is safe."""
    if secret is None:
        return "is signed, and we have no secret" if _signed(raw) else None
    refused = refusal(raw, secret)
    if refused is None or refused.reason != "bad-signature":  # garbage or unsigned: no pool reads it now
        return None
    return f"does not verify with our secret ({refused})"


def refusal(raw: bytes, secret: bytes) -> BadMessage | None:
    """Why pools sharing SECRET ignore the stored record RAW (None: they read it)."""
    try:
        decode(raw, secret)
    except BadMessage as err:
        return err
    return None


def _signed(raw: bytes) -> bool:
    try:
        return "sig" in json.loads(raw)
    except (ValueError, TypeError):
        return False
