"""Control messages: what travels on the Redis channel, and the checks
every message gets, whatever its command (each command's own checks are in
its module: exit.py, data.py, scale.py; registry.py applies them).

A message is a JSON object:

    {"cmd": NAME,                        (a command of registry.py)
     "key": str, "value": JSON, "n": int (what the command takes)
     "hosts": [str, ...], "pool": str,   (optional targets; absent = every)
     "ts": float, "nonce": str, "sig": hex}

With a shared secret, ``sig`` is HMAC-SHA256 over the canonical JSON of
every other field, and ts and nonce guard against stale and replayed
messages. Without one, the plain string ``exit`` is accepted too (as sent by
``redis-cli PUBLISH channel exit``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

MAX_MESSAGE = 64 * 1024
MAX_FUTURE_SKEW = 5.0  # seconds a signed message may come from the future (clocks drift)
PLAIN_EXIT = "exit"  # the one message that may come unsigned and bare (redis-cli PUBLISH channel exit)
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_LATEST_TS = 1e11  # year 5138: anything later is not a timestamp


class BadMessage(ValueError):
    """The message is rejected; the text says why, `reason` in one word (the
    label of gearman_workers_control_messages_total, and what an operator's
    command is told): malformed, unsigned, bad-signature, stale, replayed,
    unknown-command, before-start."""

    def __init__(self, text: str, reason: str = "malformed") -> None:
        super().__init__(text)
        self.reason = reason


NONCE_RE = re.compile(r"[0-9a-f]{32}")  # what encode() makes: safe in a Redis key


@dataclasses.dataclass(frozen=True)
class Message:
    """One control message as it travels (the master's own commands are
    commands.py's: what a pool does once a message is accepted)."""

    cmd: str
    key: str | None = None
    value: Any = None
    n: int | None = None
    hosts: tuple[str, ...] = ()
    pool: str | None = None
    ts: float | None = None
    nonce: str | None = None

    def targets(self, hostname: str, pool: str) -> bool:
        return (not self.hosts or hostname in self.hosts) and (self.pool is None or self.pool == pool)

    def body(self) -> dict[str, Any]:
        """Every field that is set; `value` whenever the message carries one
        (a value may be null: `set k null`), which `carries_value` says."""
        fields = {"cmd": self.cmd, "key": self.key, "value": self.value, "n": self.n,
                  "hosts": list(self.hosts) or None, "pool": self.pool, "ts": self.ts, "nonce": self.nonce}
        return {k: v for k, v in fields.items() if v is not None or (k == "value" and self.carries_value)}

    carries_value: bool = dataclasses.field(default=False, compare=False)


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signature(body: dict[str, Any], secret: bytes) -> str:
    return hmac.new(secret, _canonical(body), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def encode(message: Message, secret: bytes | None, now: float | None = None) -> bytes:
    """Serialise MESSAGE with a fresh nonce (it names the pools' answers:
    acks.py), stamping and signing it when there is a secret."""
    message = dataclasses.replace(message, nonce=message.nonce or new_nonce())
    if secret is not None:
        stamp = message.ts if message.ts is not None else (now if now is not None else time.time())
        message = dataclasses.replace(message, ts=stamp)
    body = message.body()
    if secret is not None:
        body["sig"] = signature(body, secret)
    return _canonical(body)


def _expect(raw: dict[str, Any], field: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = raw.get(field)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadMessage(f"field {field!r} must be {what}, not {type(value).__name__}")
    if isinstance(value, str):
        _encodable(field, value)
    return value


def _encodable(field: str, text: str) -> None:
    """JSON can carry lone surrogates ("\\ud800"): valid JSON, not encodable
    text, and these fields become Redis keys and log lines."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMessage(f"field {field!r} is not valid Unicode text") from None


def decode(data: bytes, secret: bytes | None) -> Message:
    """Parse one message and check what every message must be; raises
    BadMessage naming the problem, and nothing else, whatever DATA is (it
    comes from anyone who can publish or write a key). What its command
    needs, registry.decode checks; freshness and replay (which need a clock
    and memory), ``Verifier``. This function is pure.
    """
    try:
        return _decode(data, secret)
    except BadMessage:
        raise
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as err:
        raise BadMessage(f"malformed message ({type(err).__name__})") from None


def _decode(data: bytes, secret: bytes | None) -> Message:
    if not isinstance(data, bytes):
        raise BadMessage(f"message must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE:
        raise BadMessage(f"message of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("message is not UTF-8") from None
    if text.strip() == PLAIN_EXIT:
        if secret is not None:
            raise BadMessage("unsigned message (a secret is configured): plain 'exit' ignored", "unsigned")
        return Message(PLAIN_EXIT)
    try:
        raw = json.loads(text)
    except ValueError:
        raise BadMessage("message is not JSON (nor the plain word exit)") from None
    except RecursionError:
        raise BadMessage("message is nested too deeply") from None
    if not isinstance(raw, dict):
        raise BadMessage(f"message must be a JSON object, not {type(raw).__name__}")
    unknown = set(raw) - {"cmd", "key", "value", "n", "hosts", "pool", "ts", "nonce", "sig"}
    if unknown:  # a publisher's text: quoted and cut, never written out as it came
        names = sorted(unknown)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        shown = ", ".join(repr(name[:40]) for name in names[:5]) + more
        raise BadMessage(f"unknown field(s) {shown}")
    if secret is not None:
        _check_signature(raw, secret)
    return _command(raw)


def _check_signature(raw: dict[str, Any], secret: bytes) -> None:
    sig = raw.get("sig")
    if sig is None:
        raise BadMessage("unsigned message (a secret is configured)", "unsigned")
    if not isinstance(sig, str) or not _SIGNATURE_RE.fullmatch(sig):
        raise BadMessage("malformed signature (expected 64 hex digits)")
    body = {k: v for k, v in raw.items() if k != "sig"}
    if not hmac.compare_digest(sig, signature(body, secret)):
        raise BadMessage("bad signature", "bad-signature")
    if not isinstance(raw.get("ts"), (int, float)) or not isinstance(raw.get("nonce"), str):
        raise BadMessage("signed message without ts and nonce")


def _command(raw: dict[str, Any]) -> Message:
    cmd = _expect(raw, "cmd", str, "a string")
    if cmd is None:
        raise BadMessage("message without a command (field 'cmd')")
    key = _expect(raw, "key", str, "a string")
    n = _expect(raw, "n", int, "a whole number")
    hosts = _expect(raw, "hosts", list, "a list of host names") or []
    if not all(isinstance(h, str) and h for h in hosts):
        raise BadMessage("field 'hosts' must list non-empty strings")
    for host in hosts:
        _encodable("hosts", host)
    pool = _expect(raw, "pool", str, "a string")
    ts = _expect(raw, "ts", (int, float), "a number")
    if ts is not None:
        if not 0 < ts < _LATEST_TS:  # compares ints of any size without converting them
            raise BadMessage("field 'ts' is not a plausible timestamp")
        ts = float(ts)
    nonce = _expect(raw, "nonce", str, "a string")
    return Message(cmd, key, raw.get("value"), n, tuple(hosts), pool, ts, nonce, carries_value="value" in raw)


class Verifier:
    """Freshness and replay checks for signed messages, per pool.

    A message is fresh from MAX_FUTURE_SKEW seconds ahead of our clock to
    MAX_AGE behind it. Its nonce must be new: ``remember`` (the listener
    gives a Redis SET NX with an expiry) says whether it was, so that a
    restarted pool does not reopen the replay window; nonces are also kept
    in memory for the message lifetime."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._seen: dict[str, float] = {}

    @property
    def lifetime(self) -> float:
        """How long a nonce must be remembered."""
        return self.max_age + MAX_FUTURE_SKEW

    def check(self, message: Message, now: float | None = None,
              remember: Callable[[str], bool] | None = None) -> None:
        now = time.time() if now is None else now
        if message.ts is None or message.nonce is None:
            return
        if message.ts - now > MAX_FUTURE_SKEW:
            raise BadMessage(f"message from the future ({message.ts - now:.0f} s ahead, "
                             f"limit {MAX_FUTURE_SKEW:.0f} s)", "stale")
        if now - message.ts > self.max_age:
            raise BadMessage(f"stale message ({now - message.ts:.0f} s old, limit {self.max_age:.0f} s)", "stale")
        self._seen = {n: t for n, t in self._seen.items() if now - t <= self.lifetime}
        if message.nonce in self._seen or (remember is not None and not remember(message.nonce)):
            raise BadMessage("replayed message (nonce already seen)", "replayed")
        self._seen[message.nonce] = now
