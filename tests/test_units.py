"""Unit tests: pure pieces, no servers."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearman_workers import config as configuration
from gearman_workers import protocol as p
from gearman_workers.arbiter import describe_exit
from gearman_workers.control import cli as control_cli
from gearman_workers.control.messages import BadMessage, Command, Verifier, decode, encode
from gearman_workers.job import TaskResultError, encode_result
from gearman_workers.jobstats import DONE, FAILED, MAX_TASKS, POISON, TIMEOUT, JobStats
from gearman_workers.metrics import Snapshot, registry_for
from gearman_workers.notify import Notifier
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


def test_packet_reader_takes_one_whole_read_as_is_and_falls_back_otherwise() -> None:
    assign = p.HEADER.pack(p.RES, p.JOB_ASSIGN_UNIQ, 9) + b"H:1\0f\0u\0d"
    noop = p.HEADER.pack(p.RES, p.NOOP, 0)
    buffer = bytearray(64)
    view = memoryview(buffer)

    def received(reader: p.PacketReader, data: bytes) -> list[tuple[int, bytes]]:
        buffer[:len(data)] = data
        return reader.feed_received(view, len(data))

    assert received(p.PacketReader(), assign) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    assert received(p.PacketReader(), noop + assign) == [(p.NOOP, b""), (p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    reader = p.PacketReader()
    assert received(reader, assign[:5]) == []
    assert received(reader, assign[5:]) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d")]
    reader = p.PacketReader()
    assert received(reader, noop + assign[:15]) == [(p.NOOP, b"")]
    assert received(reader, assign[15:] + noop) == [(p.JOB_ASSIGN_UNIQ, b"H:1\0f\0u\0d"), (p.NOOP, b"")]
    with pytest.raises(p.ProtocolError):
        received(p.PacketReader(), noop + b"\0REQ" + b"\0" * 8)


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


# --- observability: the pieces, with fakes --------------------------------------


def test_job_counts_survive_their_child_and_never_count_twice() -> None:
    stats = JobStats(3)
    stats.add_tasks(["echo", "boom"])
    first, second = stats.counter(0), stats.counter(1)
    first.count(b"echo", DONE, 0.002)
    first.count(b"boom", TIMEOUT, 0.7)
    second.count(b"echo", DONE, 0.0004)
    second.count(b"boom", POISON, 123.0)  # not run: no duration
    stats.retire(0)  # the child in slot 0 died
    stats.counter(0).count(b"echo", FAILED, 0.03)  # its successor
    echo, boom = stats.totals(3)
    assert (echo.task, echo.outcomes) == ("echo", {"done": 2, "failed": 1, "timeout": 0, "poison": 0})
    assert sum(echo.buckets) == 3 and echo.buckets[0] == 1 and echo.buckets[1] == 1  # <= 1 ms, <= 5 ms
    assert boom.outcomes == {"done": 0, "failed": 0, "timeout": 1, "poison": 1}
    assert sum(boom.buckets) == 1 and boom.seconds == pytest.approx(0.7)


def test_a_reload_keeps_old_rows_and_overflow_shares_the_last() -> None:
    stats = JobStats(1)
    stats.add_tasks([f"t{i}" for i in range(MAX_TASKS + 5)])
    counter = stats.counter(0)
    counter.count(b"t0", DONE, 0.1)
    counter.count(f"t{MAX_TASKS + 4}".encode(), DONE, 0.1)
    counter.count(f"t{MAX_TASKS - 1}".encode(), DONE, 0.1)
    totals = stats.totals(1)
    assert len(totals) == MAX_TASKS and totals[0].outcomes["done"] == 1
    assert totals[-1].task == "(other tasks)" and totals[-1].outcomes["done"] == 2


class FakeSource:
    def metrics_snapshot(self) -> Snapshot:
        stats = JobStats(1)
        stats.add_tasks(["echo"])
        stats.counter(0).count(b"echo", DONE, 0.02)
        return Snapshot(desired=3, children={"idle": 2, "busy": 1}, exits={"crash": 4},
                        registered={"10.0.0.1:4730": 3, "10.0.0.2:4730": 0}, control_up=False,
                        jobs=stats.totals(1), resident={"master": 30_000_000, "children": 90_000_000})


def test_the_collector_labels_every_series_with_pool_and_host() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry_for(FakeSource(), "batch", "web1")).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("gearman_workers_")}
    assert all(("host", "web1") in labels and ("pool", "batch") in labels for _, labels in samples)

    def get(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted({"pool": "batch", "host": "web1", **labels}.items()))]

    assert get("gearman_workers_jobs_total", task="echo", outcome="done") == 1
    assert get("gearman_workers_job_duration_seconds_bucket", task="echo", le="0.01") == 0
    assert get("gearman_workers_job_duration_seconds_bucket", task="echo", le="0.025") == 1
    assert get("gearman_workers_children", state="starting") == 0
    assert get("gearman_workers_children", state="busy") == 1
    assert get("gearman_workers_child_exits_total", reason="crash") == 4
    assert get("gearman_workers_child_exits_total", reason="hung") == 0
    assert get("gearman_workers_gearmand_up", server="10.0.0.1:4730") == 1
    assert get("gearman_workers_gearmand_up", server="10.0.0.2:4730") == 0
    assert get("gearman_workers_control_up") == 0
    assert get("gearman_workers_resident_bytes", role="children") == 90_000_000


def test_watchdog_kicks_are_due_four_times_per_period(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / "notify"))
    sink.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert "WATCHDOG_USEC" not in os.environ  # our children must not think it is theirs
    assert notifier.environment() == {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"}
    notifier.kick_watchdog()
    notifier.kick_watchdog()  # not due yet
    assert sink.recv(100) == b"WATCHDOG=1"
    with pytest.raises(BlockingIOError):
        sink.recv(100)
    due = notifier.watchdog_due()
    assert due is not None and 0.9 < due - time.monotonic() <= 1.0
    notifier.muted = True  # a successor before it is in charge
    assert notifier.watchdog_due() is None


@pytest.mark.parametrize("bad, problem", [
    ({"metrics": {"listen": "9100"}}, "[metrics] listen: expected host:port"),
    ({"metrics": {"listen": "127.0.0.1:99999"}}, "[metrics] listen: expected host:port"),
    ({"pool": {"log_format": "xml"}}, "[pool] log_format: expected one of text, json, got 'xml'"),
    ({"gearman": {"servers": [f"h{i}:4730" for i in range(65)]}}, "[gearman] servers: expected at most 64"),
    ({"pool": {"min_processes": 2}}, "[pool] min_processes: autoscaling needs max_processes too"),
    ({"pool": {"max_processes": 2}}, "[pool] max_processes: autoscaling needs min_processes too"),
    ({"pool": {"min_processes": 3, "max_processes": 2}}, "[pool] min_processes: 3 is above max_processes 2"),
    ({"pool": {"min_processes": 1, "max_processes": 2, "processes": 4}},
     "[pool] processes: 4 is outside min_processes 1 .. max_processes 2"),
    ({"pool": {"scale_down_after": 0}}, "[pool] scale_down_after: expected seconds greater than 0"),
    ({"tasks": {"echo": {"call": "m:f", "processes": 0}}},
     "[tasks]: task 'echo': expected a number from 1 to 1024, got 0"),
    ({"pool": {"min_processes": 1, "max_processes": 2}, "tasks": {"echo": {"call": "m:f", "processes": 1}}},
     "[pool] min_processes: every task has dedicated children; nothing is left to autoscale"),
])
def test_new_settings_are_checked(tmp_path: Path, bad: dict, problem: str) -> None:
    def toml(value: object) -> str:
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
        return json.dumps(value)

    path = tmp_path / "pool.toml"
    tables = {"tasks": {"echo": "m:f"}, **bad}
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items())
                            for name, table in tables.items()))
    with pytest.raises(configuration.ConfigError, match=re.escape(problem)):
        configuration.load(path=path)


def test_status_table_drops_the_job_column_before_it_wraps(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    child = {"slot": 0, "pid": 4242, "state": "busy", "dedicated_to": None, "task": "resize_images",
             "job": "H:worker-host-17:90210", "busy_for": 75.2, "jobs_done": 12345, "jobs_failed": 3,
             "rss": 52_000_000, "age": 7300.0}
    pools = [{"host": "worker-host-17", "name": "images", "pid": 4000, "desired": 1, "children": [child]}]
    document = control_cli.status_document(pools)
    assert document["children"][0] == {"host": "worker-host-17", "pool": "images", "master": 4000,
                                       "reported": None, **child}
    for columns, job_shown in ((200, True), (80, False)):
        monkeypatch.setenv("COLUMNS", str(columns))
        control_cli._print_status(document["children"])
        out = capsys.readouterr().out
        assert ("H:worker-host-17:90210" in out) == job_shown
        assert all(len(line) <= columns for line in out.splitlines())
        assert " 75s " in out and "2h01m" in out and "50M" in out
