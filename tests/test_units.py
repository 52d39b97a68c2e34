"""Unit tests: pure pieces, no servers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearman_workers import config as configuration
from gearman_workers import protocol as p
from gearman_workers.arbiter import describe_exit
from gearman_workers.control.messages import BadMessage, Command, Verifier, decode, encode
from gearman_workers.job import TaskResultError, encode_result
from gearman_workers.state import PoolState, ProcessIdentity, StateFileError

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
    command = Command(cmd, key=key if cmd in ("set", "del") else None, value=value if cmd == "set" else None,
                      n=3 if cmd == "scale" else None, hosts=tuple(hosts))
    decoded = decode(encode(command, SECRET, now=1000.0), SECRET)
    assert (decoded.cmd, decoded.key, decoded.hosts, decoded.ts) == (cmd, command.key, tuple(hosts), 1000.0)
    if cmd == "set":
        assert decoded.value == value


def test_signatures_freshness_and_replay() -> None:
    message = encode(Command("exit"), SECRET, now=1000.0)
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
    assert Command("exit").targets("h1", "p")
    assert Command("exit", hosts=("h1", "h2")).targets("h2", "p")
    assert not Command("exit", hosts=("h1",)).targets("h2", "p")
    assert Command("exit", pool="p").targets("h", "p") and not Command("exit", pool="q").targets("h", "p")


def test_packet_reader_handles_split_and_joined_packets() -> None:
    packets = p.HEADER.pack(p.RES, p.NOOP, 0) + p.HEADER.pack(p.RES, p.JOB_ASSIGN_UNIQ, 9) + b"H:1\0f\0u\0d"
    for cut in range(len(packets) + 1):
        reader = p.PacketReader()
        got = reader.feed(packets[:cut]) + reader.feed(packets[cut:])
        assert got == [(p.NOOP, b""), (p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    with pytest.raises(p.ProtocolError):
        p.PacketReader().feed(b"\0REQ" + b"\0" * 8)


def test_encode_result() -> None:
    assert encode_result(b"x") == b"x" and encode_result("é") == "é".encode() and encode_result(None) == b""
    with pytest.raises(TaskResultError, match="task returned int"):
        encode_result(42)


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[gearman]\nservers = ["a:1", "b:2"]\n[pool]\nprocesses = 3\npython_path = ["lib"]\n'
                    '[tasks]\necho = "m:f"\n')
    config = configuration.load(path=path)
    assert [str(s) for s in config.servers] == ["a:1", "b:2"]
    assert config.processes == 3 and config.tasks == {"echo": configuration.TaskSpec("m:f")}
    assert config.python_path == [str(tmp_path / "lib")]
    assert config.pidfile == Path("/run/gearman-workers/default.pid")
    with pytest.raises(configuration.ConfigError, match=r"\[pool\] processes: expected a number from 1 to 1024"):
        path.write_text("[pool]\nprocesses = 5000\n[tasks]\necho = 'm:f'\n")
        configuration.load(path=path)
    with pytest.raises(configuration.ConfigError, match="not valid TOML"):
        path.write_text("[pool\n")
        configuration.load(path=path)
    with pytest.raises(configuration.ConfigError, match="no task configured"):
        configuration.load(path=None)


def test_state_file_rejects_what_a_master_never_writes() -> None:
    good = PoolState("p", "boot", ProcessIdentity(10, 5), [ProcessIdentity(11, 6)])
    assert PoolState.from_json(good.to_json()) == good
    for text in ("", "[]", '{"version": 1}', good.to_json().replace('"pid": 11', '"pid": "11"'),
                 good.to_json().replace('"version": 1', '"version": 9')):
        with pytest.raises(StateFileError):
            PoolState.from_json(text)


def test_describe_exit_names_the_signal() -> None:
    assert describe_exit(9) == "killed by SIGKILL"
    assert describe_exit(3 << 8) == "exited with status 3"


def test_the_master_never_reads_a_half_written_heartbeat() -> None:
    """A child rewrites its slot while the master reads it (another
    process, no lock): every read sees the old record or the new one, never
    the zeroes struct.pack_into writes first (the master took those for a
    child silent since boot, and killed it)."""
    from gearman_workers.scoreboard import Scoreboard, State

    board = Scoreboard(2)
    board.reset(0)
    writer = board.writer(0, 4242)
    child = os.fork()
    if child == 0:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            writer.publish(State.IDLE)
            writer.beat()
        os._exit(0)
    try:
        reads = [board.read(0) for _ in range(100_000)]
    finally:
        os.waitpid(child, 0)
    assert all(info.heartbeat > 0 and info.pid in (0, 4242) for info in reads)
