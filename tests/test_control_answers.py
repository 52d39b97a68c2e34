"""Operator commands that say what happened (issue 27): every live pool a
command is aimed at answers, the CLI prints a line per pool and exits
non-zero for what did not happen; nothing the pools would ignore is sent
or kept; fleet-wide commands only on purpose."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gearman_workers import __version__
from helpers import (
    Gearmand,
    Pool,
    RedisServer,
    control_pool,
    free_port,
    heartbeat_up,
    operator_cli,
    run_cli,
    running,
    scrape,
    value,
    values_seen,
    wait_for,
)


def gm(name: str, redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess:
    return operator_cli(name, "--redis-url", redis_server.url, *args)


def signed(gearmand: Gearmand, tmp_path: Path, redis_server: RedisServer, secret_file: Path, *extra: str,
           **kwargs: object) -> Pool:
    return control_pool(gearmand, tmp_path, redis_server.url, "--secret-file", str(secret_file), *extra,
                        **kwargs)  # type: ignore[arg-type]


def wrong_secret(tmp_path: Path) -> Path:
    path = tmp_path / "wrong.secret"
    path.write_text("not-the-pools-secret\n")
    path.chmod(0o600)
    return path


def test_a_wrong_secret_is_refused_by_the_pool_said_per_pool_and_counted(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path, secret_file: Path) -> None:
    port = free_port()
    pool = signed(gearmand, tmp_path, redis_server, secret_file, "--metrics-listen", f"127.0.0.1:{port}")
    with running(pool):
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        done = gm("gm-ctl", redis_server, "--secret-file", str(wrong_secret(tmp_path)), "set", "colour", '"red"')
        assert done.returncode == 1
        assert "host-a/alpha: refused (bad-signature: bad signature)" in done.stdout
        assert "What was kept before is kept again" in done.stdout
        assert redis_server.client().hget("gearman-workers:data:all", "colour") is None  # not left behind
        samples = scrape(port)
        assert value(samples, "gearman_workers_control_messages_total", outcome="refused",
                     reason="bad-signature") == 1
        right = gm("gm-ctl", redis_server, "--secret-file", str(secret_file), "set", "colour", '"blue"')
        assert right.returncode == 0 and right.stdout == "host-a/alpha: applied\n"
        assert value(scrape(port), "gearman_workers_control_messages_total", outcome="applied",
                     reason="set") == 1


def test_without_a_secret_nothing_is_sent_unless_asked(redis_server: RedisServer) -> None:
    listener = redis_server.client().pubsub()
    listener.subscribe("gearman-workers")
    done = gm("gm-ctl", redis_server, "set", "colour", '"green"')
    assert done.returncode == 2
    assert "no secret to sign with" in done.stderr and "--allow-unsigned" in done.stderr
    listener.get_message(timeout=0.5)  # the subscription's confirmation
    assert listener.get_message(timeout=0.5) is None and not redis_server.client().keys("gearman-workers:data:*")


def test_an_unsigned_set_never_replaces_a_signed_value(gearmand: Gearmand, redis_server: RedisServer,
                                                       tmp_path: Path, secret_file: Path) -> None:
    assert gm("gm-ctl", redis_server, "--secret-file", str(secret_file), "set", "colour", '"blue"').returncode == 1
    unsigned = gm("gm-ctl", redis_server, "--allow-unsigned", "set", "colour", '"green"')
    assert unsigned.returncode == 1
    assert "set colour in scope all: the record there is signed, and we have no secret" in unsigned.stderr
    shown = gm("gm-ctl", redis_server, "--secret-file", str(secret_file), "get", "colour")
    assert shown.returncode == 0 and shown.stdout.split() == ["all", "colour", "=", '"blue"']
    pool = signed(gearmand, tmp_path, redis_server, secret_file)
    with running(pool):  # a pool started afterwards has the signed value, and no warning
        wait_for(lambda: set(values_seen(gearmand, "colour", 4).values()) == {"'blue'"}, what="the value")
        assert "ignoring data" not in pool.log()


def test_get_marks_what_pools_ignore_and_a_missing_key_exits_1(redis_server: RedisServer, secret_file: Path) -> None:
    gm("gm-ctl", redis_server, "--allow-unsigned", "set", "size", "3")
    shown = gm("gm-ctl", redis_server, "--secret-file", str(secret_file), "get")
    assert "size = 3  [pools ignore it: unsigned message (a secret is configured)]" in shown.stdout
    missing = gm("gm-ctl", redis_server, "get", "nope")
    assert missing.returncode == 1 and missing.stderr == "nope: not set\n"


def test_exit_scale_and_del_reach_every_pool_only_when_told_all(redis_server: RedisServer) -> None:
    for command in (["gm-exit"], ["gm-ctl", "scale", "3"], ["gm-ctl", "del", "k"]):
        done = gm(command[0], redis_server, "--allow-unsigned", *command[1:])
        assert done.returncode == 2, command
        assert "would reach every pool on every host: aim it with --host or --pool, or say --all" in done.stderr
    zero = gm("gm-ctl", redis_server, "--allow-unsigned", "scale", "0", "--all")
    assert zero.returncode == 2 and "say --allow-zero" in zero.stderr
    both = gm("gm-exit", redis_server, "--allow-unsigned", "--all", "--pool", "a")
    assert both.returncode == 2 and "--all with --host or --pool" in both.stderr


def test_a_command_no_live_pool_matches_exits_1(gearmand: Gearmand, redis_server: RedisServer,
                                                 tmp_path: Path) -> None:
    with running(control_pool(gearmand, tmp_path, redis_server.url)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        done = gm("gm-exit", redis_server, "--allow-unsigned", "--pool", "nosuchpool")
        assert done.returncode == 1 and "no live pool is aimed at" in done.stdout
        assert pool.proc is not None and pool.proc.poll() is None


def test_target_flags_go_on_either_side_and_pools_speaks_json(gearmand: Gearmand, redis_server: RedisServer,
                                                              tmp_path: Path) -> None:
    first = control_pool(gearmand, tmp_path, redis_server.url, name="alpha", host="host-a")
    second = control_pool(gearmand, tmp_path, redis_server.url, name="beta", host="host-b")
    with running(first), running(second):
        wait_for(lambda: heartbeat_up(redis_server, first) and heartbeat_up(redis_server, second), what="heartbeats")
        before = gm("gm-ctl", redis_server, "--allow-unsigned", "--pool", "beta", "set", "k", "1")
        after = gm("gm-ctl", redis_server, "set", "k", "2", "--allow-unsigned", "--host", "host-a")
        assert before.stdout == "host-b/beta: applied\n" and after.stdout == "host-a/alpha: applied\n"
        listed = json.loads(gm("gm-ctl", redis_server, "pools", "--json", "--host", "host-b").stdout)
        assert [(p["host"], p["pool"], p["pid"]) for p in listed] == [("host-b", "beta", second.proc.pid)]  # type: ignore[union-attr]


def test_the_commands_say_their_version_and_their_default_configuration() -> None:
    for name in ("gm-ctl", "gm-exit"):
        assert run_cli(name, "--version").stdout.strip() == f"{name} {__version__}"
        assert "/etc/gearman-workers/control.toml" in run_cli(name, "--help").stdout


def test_two_live_masters_with_one_host_and_pool_name_are_reported(gearmand: Gearmand, redis_server: RedisServer,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = control_pool(gearmand, tmp_path / "a", redis_server.url, name="same", host="twin")
    second = control_pool(gearmand, tmp_path / "b", redis_server.url, name="same", host="twin")
    with running(first):
        second.start(wait=False)  # the pool's name counts both pools' workers in gearmand
        try:
            wait_for(lambda: "another live master" in first.log() + second.log(), what="the duplicate reported")
            listed = wait_for(lambda: (out := gm("gm-ctl", redis_server, "pools").stdout) and "another live master"
                              in out and out, what="gm-ctl pools to show it")
            assert "twin/same too" in listed
        finally:
            second.stop()


def test_a_master_restarted_after_kill_9_is_no_twin_of_its_dead_self(gearmand: Gearmand, redis_server: RedisServer,
                                                                      tmp_path: Path) -> None:
    first = control_pool(gearmand, tmp_path, redis_server.url)
    with running(first):
        wait_for(lambda: heartbeat_up(redis_server, first), what="the heartbeat")
        first.signal(9)
        first.wait_exit()
    again = control_pool(gearmand, tmp_path, redis_server.url)
    with running(again):
        reports: set[float] = set()

        def beats() -> bool:
            raw = redis_server.client().get("gearman-workers:pool:host-a:alpha")
            info = json.loads(raw) if raw else {}
            if info.get("pid") == again.proc.pid:  # type: ignore[union-attr]
                reports.add(info["reported"])
            return len(reports) >= 3
        wait_for(beats, what="three heartbeats of the new master")
        assert "another live master" not in again.log()


def test_the_commands_read_only_the_control_table_of_a_file(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"  # a pool's file whose other tables the pool alone reads
    config.write_text(f'[pool]\nprocesses = 0\n[control]\nredis_url = "{redis_server.url}"\nallow_unsigned = true\n')
    done = run_cli("gm-ctl", "--config", str(config), "pools")
    assert done.returncode == 0, done.stderr
    config.write_text(f'[control]\nredis_ur = "{redis_server.url}"\n')
    refused = run_cli("gm-ctl", "--config", str(config), "pools")
    assert refused.returncode == 2 and "unknown key [control] redis_ur (did you mean redis_url?)" in refused.stderr


def test_flags_that_do_nothing_are_refused(redis_server: RedisServer) -> None:
    done = gm("gm-ctl", redis_server, "get", "k", "--host", "h1")
    assert done.returncode == 2 and "--host, --pool and --all do not apply to it" in done.stderr
