"""Hostile input against the control plane and gm-cleanup: property tests of
the decoder and of both the published and the stored path (fakes of Redis),
then the attacks the security review found, against real pools and a real
redis-server."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearman_workers import identities
from gearman_workers.commands import PauseTasks, PublishData, Stop
from gearman_workers.control import data, exit, store
from gearman_workers.control.data import DataBook
from gearman_workers.control.listener import ControlListener
from gearman_workers.control.messages import MAX_FUTURE_SKEW, BadMessage, Message, Verifier, encode
from gearman_workers.control.registry import decode
from gearman_workers.pidfile import read_pid
from helpers import (
    BIN,
    EXAMPLES,
    Gearmand,
    Pool,
    RedisServer,
    control_pool,
    heartbeat_up,
    needs_root,
    operator_cli,
    pid_alive,
    run_cli,
    running,
    values_seen,
    wait_for,
)

SECRET = b"a-test-secret-of-enough-bytes"


def deep(levels: int) -> bytes:
    return b'{"cmd": "set", "key": "k", "value": ' + b"[" * levels + b"]" * levels + b"}"


hostile_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300)
                   | st.floats() | st.text() | st.text(alphabet=st.characters(min_codepoint=0x80)))
hostile_json = st.recursive(hostile_scalars,
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                            max_leaves=12)
fields = st.sampled_from(["cmd", "key", "value", "n", "hosts", "pool", "ts", "nonce", "sig"])
hostile_objects = st.dictionaries(fields, hostile_json, max_size=9)
deeply_nested = st.integers(min_value=1, max_value=30000).map(deep)
fuzz = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                deadline=None, max_examples=300)


# --- the decoder ---------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b'{"cmd": "exit", "ts": 1, "nonce": "a", "sig": "\xc3\xa9"}',  # non-ASCII signature: compare_digest's TypeError
    b'{"cmd": "exit", "ts": 1, "nonce": "a", "sig": 7}',
    deep(50000)[:60000],  # deeper than json's recursion limit
    b'{"cmd": "del", "key": "\\ud800", "ts": 1, "nonce": "\\udfff", "sig": "' + b"0" * 64 + b'"}',  # surrogates
    b'{"cmd": "exit", "ts": 1' + b"0" * 400 + b', "nonce": "a", "sig": "' + b"0" * 64 + b'"}',  # int beyond float
    b'{"cmd": "scale", "n": 1' + b"0" * 4000 + b"}",
    b'{"cmd": "exit", "ts": -1e400}',
])
def test_the_reported_crashers_are_plain_rejections(data: bytes) -> None:
    with pytest.raises(BadMessage):
        decode(data, SECRET)
    try:  # unsigned mode may accept some of them; it must not raise anything else
        decode(data, None)
    except BadMessage:
        pass


@fuzz
@given(hostile_objects)
def test_any_json_object_is_a_command_or_a_rejection(raw: dict[str, Any]) -> None:
    data = json.dumps(raw).encode()  # ASCII escapes: lone surrogates travel too
    for secret in (None, SECRET):
        try:
            command = decode(data, secret)
        except BadMessage:
            continue
        assert command.cmd in ("exit", "set", "del", "scale")
        for text in (command.key, command.pool, command.nonce, *command.hosts):
            assert text is None or text.encode("utf-8")


@fuzz
@given(st.binary(max_size=512) | hostile_objects.map(lambda o: json.dumps(o).encode()) | deeply_nested)
def test_the_published_path_never_falls_over(data: bytes) -> None:
    listener, _ = fake_listener(secret=None)
    listener._on_message(FakeRedis(), data)
    signed, signed_master = fake_listener(secret=SECRET)
    signed._on_message(FakeRedis(), data)
    assert not [c for c in signed_master.submitted if not isinstance(c, PublishData)]  # nothing unsigned obeyed


@fuzz
@given(st.lists(st.binary(max_size=256) | hostile_objects.map(lambda o: json.dumps(o).encode()) | deeply_nested,
                min_size=1, max_size=4))
def test_the_stored_path_never_falls_over(values: list[bytes]) -> None:
    client = FakeRedis()
    for scope, raw in zip(store.pool_scopes("h", "p"), values, strict=False):
        client.strings[f"gearman-workers:exit:{scope}"] = raw
        client.hashes[f"gearman-workers:data:{scope}"] = {b"k": raw, b"\xff": raw}
        client.hashes[f"gearman-workers:pause:{scope}"] = {b"k": raw, b"\xff": raw}
    for secret in (None, SECRET):
        listener, master = fake_listener(secret=secret)
        listener._catch_up(client)
        assert [type(c) for c in master.submitted] == [PublishData, PauseTasks]
        assert master.submitted[-1] == PauseTasks(frozenset())  # nothing hostile paused a task


# --- scopes, freshness, replay, versions ----------------------------------------------


def test_a_signed_command_counts_only_under_the_scope_it_names() -> None:
    client = FakeRedis()
    exit_for_p1 = encode(Message("exit", pool="p1", ts=2e9), SECRET)
    client.strings["gearman-workers:exit:pool:p2"] = exit_for_p1
    assert exit.latest_stored(client, store.Keys("gearman-workers"), "h", "p2", SECRET) is None
    client.strings["gearman-workers:exit:pool:p1"] = exit_for_p1
    assert exit.latest_stored(client, store.Keys("gearman-workers"), "h", "p1", SECRET) is not None
    set_for_h1 = encode(Message("set", key="k", value=1, hosts=("h1",), ts=2e9), SECRET)
    client.hashes["gearman-workers:data:all"] = {b"k": set_for_h1}
    assert data.stored(client, store.Keys("gearman-workers"), "h1", "p", SECRET) == []


def test_freshness_allows_a_small_skew_and_nonces_are_remembered_outside() -> None:
    verifier = Verifier(max_age=60)
    ahead = decode(encode(Message("exit"), SECRET, now=1000.0 + MAX_FUTURE_SKEW + 1), SECRET)
    with pytest.raises(BadMessage, match="from the future"):
        verifier.check(ahead, now=1000.0)
    remembered: set[str] = {"seen-before-a-restart"}
    replay = Message("exit", ts=1000.0, nonce="seen-before-a-restart")
    with pytest.raises(BadMessage, match="replayed"):
        Verifier(max_age=60).check(replay, now=1001.0, remember=lambda n: n not in remembered)


def test_an_older_value_never_replaces_a_newer_one_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    book = DataBook(path)
    newer = Message("set", key="k", value="new", ts=200.0)
    older = Message("set", key="k", value="old", ts=100.0)
    assert book.offer("all", newer) and not book.offer("all", older)
    book.save()
    restarted = DataBook(path)
    restarted.load()
    assert not restarted.offer("all", older)
    assert restarted.values("h", "p") == {"k": "new"}
    assert restarted.offer("all", Message("del", key="k", ts=300.0))
    assert restarted.values("h", "p") == {}
    assert not restarted.offer("all", newer)  # the delete is newer than the value written back


def test_the_book_prefers_the_most_specific_scope() -> None:
    book = DataBook()
    book.offer("all", Message("set", key="k", value=1, ts=1.0))
    book.offer("host:h", Message("set", key="k", value=2, ts=1.0))
    book.offer("host:h:pool:p", Message("del", key="k", ts=2.0))
    assert book.values("h", "p") == {"k": 2} and book.values("other", "p") == {"k": 1}


# --- against real pools and a real redis-server ------------------------------------------


def signed_pool(gearmand: Gearmand, tmp_path: Path, redis_server: RedisServer, secret_file: Path,
                **kwargs: Any) -> Pool:
    return control_pool(gearmand, tmp_path, redis_server.url, "--secret-file", str(secret_file), **kwargs)


def gm(name: str, redis_server: RedisServer, secret_file: Path, *args: str) -> str:
    result = operator_cli(name, "--redis-url", redis_server.url, "--secret-file", str(secret_file), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_malformed_stored_value_does_not_turn_control_off(gearmand: Gearmand, redis_server: RedisServer,
                                                             tmp_path: Path, secret_file: Path) -> None:
    with running(signed_pool(gearmand, tmp_path, redis_server, secret_file)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        client = redis_server.client()
        poison = '{"cmd":"exit","ts":1,"nonce":"a","sig":"é"}'.encode()
        client.set("gearman-workers:exit:all", poison)
        client.hset("gearman-workers:data:all", "k", deep(20000))
        for data in (poison, deep(20000), b'{"cmd":"exit","ts":1' + b"0" * 400 + b"}"):
            client.publish("gearman-workers", data)
        client.client_kill_filter(_type="pubsub")  # the listener reconnects and reads the stored values
        wait_for(lambda: "ignoring gearman-workers:exit:all: malformed signature" in pool.log()
                 and "ignoring data 'k' in scope all: message is nested too deeply" in pool.log(),
                 what="the stored values read and refused")
        gm("gm-exit", redis_server, secret_file, "--all")
        assert pool.wait_exit(3) == 0
        assert "control listener failed" not in pool.log()
        assert "malformed signature" in pool.log() and "nested too deeply" in pool.log()


def test_a_captured_exit_replayed_after_a_restart_is_refused(gearmand: Gearmand, redis_server: RedisServer,
                                                             tmp_path: Path, secret_file: Path) -> None:
    listener = redis_server.client().pubsub()
    listener.subscribe("gearman-workers")
    first = signed_pool(gearmand, tmp_path, redis_server, secret_file)
    with running(first):
        wait_for(lambda: heartbeat_up(redis_server, first), what="the heartbeat")
        gm("gm-exit", redis_server, secret_file, "--all")
        assert first.wait_exit() == 0
    captured = wait_for(lambda: listener.get_message(timeout=0.1, ignore_subscribe_messages=True),
                        what="the exit on the channel")["data"]
    listener.close()
    second = signed_pool(gearmand, tmp_path, redis_server, secret_file)
    with running(second):
        wait_for(lambda: heartbeat_up(redis_server, second), what="the heartbeat")
        assert redis_server.client().publish("gearman-workers", captured) == 1
        gm("gm-ctl", redis_server, secret_file, "set", "marker", "1")
        wait_for(lambda: set(values_seen(gearmand, "marker", 4).values()) == {"1"}, what="the marker")
        assert second.proc.poll() is None  # type: ignore[union-attr]
        assert "replayed message" in second.log() or "exit sent before this pool started" in second.log()


def test_an_exit_copied_into_another_pools_slot_is_ignored(gearmand: Gearmand, redis_server: RedisServer,
                                                           tmp_path: Path, secret_file: Path) -> None:
    first = signed_pool(gearmand, tmp_path, redis_server, secret_file, name="alpha")
    second = signed_pool(gearmand, tmp_path, redis_server, secret_file, name="beta")
    with running(first), running(second):
        wait_for(lambda: heartbeat_up(redis_server, first) and heartbeat_up(redis_server, second), what="heartbeats")
        gm("gm-exit", redis_server, secret_file, "--pool", "alpha")
        assert first.wait_exit() == 0
        client = redis_server.client()
        client.set("gearman-workers:exit:pool:beta", client.get("gearman-workers:exit:pool:alpha"))
        client.client_kill_filter(_type="pubsub")  # beta reconnects and reads its slot
        wait_for(lambda: "stored under pool:beta" in second.log(), what="beta to read and refuse the copy")
        assert second.proc.poll() is None  # type: ignore[union-attr]


def test_an_older_signed_set_written_back_is_ignored(gearmand: Gearmand, redis_server: RedisServer,
                                                     tmp_path: Path, secret_file: Path) -> None:
    with running(signed_pool(gearmand, tmp_path, redis_server, secret_file)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        client = redis_server.client()
        gm("gm-ctl", redis_server, secret_file, "set", "limit", "1")
        old = client.hget("gearman-workers:data:all", "limit")
        gm("gm-ctl", redis_server, secret_file, "set", "limit", "2")
        wait_for(lambda: set(values_seen(gearmand, "limit", 4).values()) == {"2"}, what="the new value")
        client.hset("gearman-workers:data:all", "limit", old)
        gm("gm-ctl", redis_server, secret_file, "set", "marker", "1")  # a nudge: the pool re-reads the hashes
        wait_for(lambda: set(values_seen(gearmand, "marker", 4).values()) == {"1"}, what="the marker")
        assert set(values_seen(gearmand, "limit", 4).values()) == {"2"}
        assert "older than the one applied" in pool.log()


def test_a_pool_with_redis_but_no_secret_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("gearman-workers", "--task", "echo=tasks:echo", "--redis-url", "redis://127.0.0.1:1/0",
                     "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert result.stderr.startswith("gearman-workers: config error: [control] secret_file: required with redis_url")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "s").exists()


def test_runtime_data_honours_the_umask(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path,
                                        secret_file: Path) -> None:
    pool = signed_pool(gearmand, tmp_path, redis_server, secret_file)
    old = os.umask(0o027)  # what the unit sets; the pool inherits it
    try:
        pool.start()
    finally:
        os.umask(old)
    try:
        gm("gm-ctl", redis_server, secret_file, "set", "token", '"abc"')
        runtime = pool.state_dir / "alpha.runtime.json"
        wait_for(runtime.exists, what="the runtime file")
        for path in (runtime, pool.state_dir / "alpha.state.json", pool.pidfile):
            assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    finally:
        pool.stop()


def test_gm_ctl_takes_connection_flags_before_the_subcommand(redis_server: RedisServer) -> None:
    result = run_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "set", "k", "1")
    assert result.returncode == 1 and "no live pool is aimed at; kept for the pools that start later" in result.stdout
    assert "--redis-url" in run_cli("gm-ctl", "--help").stdout


# --- gm-cleanup ---------------------------------------------------------------------------

NOBODY = 65534


def _forge(state_dir: Path, victim_pid: int, pidfile: Path) -> Path:
    """A state file as an attacker writes it: a stranger's identity, and a
    'pidfile' naming a file worth deleting."""
    identity = identities.ProcessIdentity.of(victim_pid)
    assert identity is not None
    path = state_dir / "forged.state.json"
    raw = json.loads(identities.PoolProcesses("forged", identities.boot_id(), identity, [identity]).to_json())
    path.write_text(json.dumps(raw | {"pidfile": str(pidfile)}))
    return path


@pytest.mark.parametrize("how", ["file owned by another user", "directory writable by others", "stranger"])
def test_gm_cleanup_acts_only_on_what_a_pool_of_ours_wrote(tmp_path: Path, how: str) -> None:
    stranger = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    try:
        forged = _forge(state_dir, stranger.pid, precious)
        if how == "file owned by another user":
            needs_root("the file must belong to another user")
            os.chown(forged, NOBODY, NOBODY)
        elif how == "directory writable by others":
            state_dir.chmod(0o777)
        result = run_cli("gm-cleanup", "--state-dir", str(state_dir))
        assert pid_alive(stranger.pid) and precious.read_text() == "keep me"
        if how == "stranger":
            assert result.returncode == 0 and f"pid {stranger.pid} is not a leftover of ours" in result.stderr
        else:
            assert result.returncode == 1
            assert result.stderr.strip().splitlines()[-1].startswith("gm-cleanup: refusing to act:")
            assert forged.exists()
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


# --- fakes ------------------------------------------------------------------------------------


class FakeRedis:
    """The few Redis calls the listener's paths make, on dicts."""

    def __init__(self) -> None:
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    def mget(self, names: list[str]) -> list[bytes | None]:
        return [self.strings.get(name) for name in names]

    def hgetall(self, name: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(name, {}))

    def get(self, name: str) -> bytes | None:
        return self.strings.get(name)

    def setex(self, name: str, ttl: int, value: bytes) -> bool:
        self.strings[name] = value
        return True


class FakeMaster:
    pid = 1
    control_since = 1.0

    def __init__(self) -> None:
        import threading

        self.fork_lock = threading.Lock()
        self.submitted: list[Any] = []

    def submit(self, command: Any) -> None:
        self.submitted.append(command)

    def summary(self) -> dict[str, Any]:
        return {}


def fake_listener(secret: bytes | None) -> tuple[ControlListener, FakeMaster]:
    listener = ControlListener("redis://127.0.0.1:1/0", "gearman-workers", "gearman-workers", "h", "p",
                               secret, 60.0)
    master = FakeMaster()
    listener.master = master
    listener._client = FakeRedis()  # type: ignore[assignment]  # as within a session
    return listener, master


def test_the_fake_master_is_obeyed_by_a_valid_command() -> None:
    listener, master = fake_listener(secret=SECRET)
    listener._on_message(FakeRedis(), encode(Message("exit"), SECRET))
    assert master.submitted == [Stop("exit command")]


def test_a_daemon_keeps_the_umask_it_was_given(gearmand: Gearmand, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    started = subprocess.run([str(BIN / "gearman-workers"), "--config", str(EXAMPLES / "gearman-workers.toml"),
                              "--servers", gearmand.address, "--name", "d", "--processes", "1",
                              "--state-dir", str(state_dir), "--daemon"],
                             capture_output=True, text=True, timeout=30, preexec_fn=lambda: os.umask(0o027))
    assert started.returncode == 0, started.stderr
    master = wait_for(lambda: read_pid(state_dir / "d.pid"), what="the daemon's PID file")
    try:
        wait_for(lambda: len(gearmand.worker_pids("d")) == 1, what="the daemon's child")
        for name in ("d.pid", "d.state.json", "d.log"):
            assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o640, name
    finally:
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: not pid_alive(master), what="the daemon to stop")
