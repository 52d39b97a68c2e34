"""Control messages, their decoder and checks: pure, no server."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearman_workers.control.messages import BadMessage, Message, Verifier, encode
from gearman_workers.control.registry import decode

SECRET = b"a-test-secret-of-enough-bytes"
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=10)
# Generating nested JSON is slow on the first draws of a cold process; that is not what we test.
fuzz = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)


@fuzz
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_are_rejected_cleanly(data: bytes) -> None:
    for secret in (None, SECRET):
        try:
            decode(data, secret)
        except BadMessage:
            pass


@fuzz
@given(st.dictionaries(st.sampled_from(["cmd", "key", "value", "n", "hosts", "pool", "ts", "nonce", "sig", "x"]),
                       json_values, max_size=8))
def test_any_json_object_parses_or_is_rejected_cleanly(raw: dict) -> None:
    try:
        command = decode(json.dumps(raw).encode(), None)
    except BadMessage:
        return
    assert command.cmd in ("exit", "set", "del", "scale")


@fuzz
@given(st.sampled_from(["exit", "set", "del", "scale"]), st.text(min_size=1, max_size=20), json_values,
       st.lists(st.text(min_size=1, max_size=8), max_size=3))
def test_signed_messages_round_trip(cmd: str, key: str, value: object, hosts: list[str]) -> None:
    command = Message(cmd, key=key if cmd in ("set", "del") else None, value=value if cmd == "set" else None,
                      n=3 if cmd == "scale" else None, hosts=tuple(hosts), carries_value=cmd == "set")
    decoded = decode(encode(command, SECRET, now=1000.0), SECRET)
    assert (decoded.cmd, decoded.key, decoded.hosts, decoded.ts) == (cmd, command.key, tuple(hosts), 1000.0)
    if cmd == "set":
        assert decoded.value == value


def test_signatures_freshness_and_replay() -> None:
    message = encode(Message("exit"), SECRET, now=1000.0)
    with pytest.raises(BadMessage, match="bad signature"):
        decode(message, b"another-secret-of-enough-bytes")
    with pytest.raises(BadMessage, match="bad signature"):
        decode(message.replace(b'"exit"', b'"scale"'), SECRET)
    with pytest.raises(BadMessage, match="unsigned"):
        decode(b'{"cmd": "exit"}', SECRET)
    verifier = Verifier(max_age=60)
    command = decode(message, SECRET)
    with pytest.raises(BadMessage, match="stale"):
        verifier.check(command, now=1061.0)
    verifier.check(command, now=1010.0)
    with pytest.raises(BadMessage, match="replayed"):
        verifier.check(command, now=1011.0)


def test_targets() -> None:
    assert Message("exit").targets("h1", "p")
    assert Message("exit", hosts=("h1", "h2")).targets("h2", "p")
    assert not Message("exit", hosts=("h1",)).targets("h2", "p")
    assert Message("exit", pool="p").targets("h", "p") and not Message("exit", pool="q").targets("h", "p")
