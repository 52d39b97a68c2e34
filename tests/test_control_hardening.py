"""What a pool's own Redis user, a publisher or a local user could still do
to the control plane, each tried against real pools and a real redis-server:
forged heartbeats, log injection, a planted data book, a replayed scale,
children holding the master's Redis sockets, a pool's user used by an
operator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from gearman_workers.control.messages import Message, encode
from helpers import (
    Gearmand,
    RedisServer,
    control_pool,
    heartbeat_up,
    operator_cli,
    run_cli,
    running,
    values_seen,
    wait_for,
)


def secret_of(secret_file: Path) -> bytes:
    return secret_file.read_bytes().strip()


def signed(gearmand: Gearmand, tmp_path: Path, redis_server: RedisServer, secret_file: Path, **kwargs: object):
    return control_pool(gearmand, tmp_path, redis_server.url, "--secret-file", str(secret_file), **kwargs)


def gm(name: str, redis_server: RedisServer, secret_file: Path, *args: str) -> subprocess.CompletedProcess:
    return operator_cli(name, "--redis-url", redis_server.url, "--secret-file", str(secret_file), *args)


def test_heartbeats_speak_only_for_the_pool_their_key_names(gearmand: Gearmand, redis_server: RedisServer,
                                                            tmp_path: Path, secret_file: Path) -> None:
    with running(signed(gearmand, tmp_path, redis_server, secret_file, host="host-a")) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        client = redis_server.client()
        real = json.loads(client.get("gearman-workers:pool:host-a:alpha"))
        # A pool user on host-b: a row for host-a under its own key, wrong types, and terminal escapes.
        client.set("gearman-workers:pool:host-b:beta", json.dumps(real), ex=60)
        client.set("gearman-workers:pool:host-b:gamma", json.dumps(
            real | {"host": "host-b", "name": "gamma", "children": [{"pid": "x"}], "desired": "many"}), ex=60)
        evil = [dict(row, task="\x1b[2J\x1b[31mPWNED", job="j\nFAKE ROW") for row in real["children"]]
        client.set("gearman-workers:pool:host-b:delta", json.dumps(
            real | {"host": "host-b", "name": "delta", "children": evil}), ex=60)
        for command in (["status"], ["status", "--json"], ["pools"]):
            result = gm("gm-ctl", redis_server, secret_file, *command)
            assert result.returncode == 0, result.stderr
            assert "beta" not in result.stdout and "gamma" not in result.stdout
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stdout), result.stdout
            assert "ignoring 2 heartbeat(s) that disagree with their key or are malformed" in result.stderr
        status = json.loads(gm("gm-ctl", redis_server, secret_file, "status", "--json").stdout)
        assert {(row["host"], row["pool"]) for row in status["pools"]} == {("host-a", "alpha"), ("host-b", "delta")}
        assert "FAKE ROW" not in gm("gm-ctl", redis_server, secret_file, "status").stdout.split("\n")[-2]


def test_a_publisher_cannot_write_log_lines(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path,
                                            secret_file: Path) -> None:
    with running(signed(gearmand, tmp_path, redis_server, secret_file)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        fake = "x\n2026-01-01 00:00:00,000 ERROR gearman_workers.master master[1]: FORGED"
        redis_server.client().publish("gearman-workers", json.dumps({"cmd": "exit", fake: 1}))
        wait_for(lambda: "rejected control message" in pool.log(), what="the rejection")
        assert not any(line.endswith("FORGED") and "rejected" not in line for line in pool.log().splitlines())
        (line,) = [line for line in pool.log().splitlines() if "rejected control message" in line]
        assert "\\n2026-01-01" in line


def test_a_planted_data_book_is_not_trusted(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path,
                                            secret_file: Path) -> None:
    pool = signed(gearmand, tmp_path, redis_server, secret_file)
    book = pool.state_dir / f"{pool.name}.control.json"
    book.parent.mkdir(parents=True)
    unsigned = encode(Message("set", key="colour", value="forged", ts=1e10), None).decode()
    book.write_text(json.dumps({"version": 2, "entries": [["all", unsigned]]}))
    with running(pool):
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        assert gm("gm-ctl", redis_server, secret_file, "set", "colour", '"blue"').returncode == 0
        wait_for(lambda: set(values_seen(gearmand, "colour", 4).values()) == {"'blue'"}, what="the signed value")
        assert "in scope all: unsigned message" in pool.log()
    book.unlink()
    os.mkfifo(book)  # a FIFO planted where the book goes must not hang the start
    with running(pool):
        wait_for(lambda: "is unreadable (not a regular file)" in pool.log(), what="the FIFO refused")


def test_a_signed_scale_sent_before_the_pool_started_is_not_obeyed(gearmand: Gearmand, redis_server: RedisServer,
                                                                   tmp_path: Path, secret_file: Path) -> None:
    captured = encode(Message("scale", n=5), secret_of(secret_file), now=time.time() - 1)
    with running(signed(gearmand, tmp_path, redis_server, secret_file)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        assert redis_server.client().publish("gearman-workers", captured) == 1
        wait_for(lambda: "scale sent before this pool started" in pool.log(), what="the replay refused")
        assert len(pool.children()) == 2


def test_children_hold_none_of_the_masters_redis_sockets(gearmand: Gearmand, redis_server: RedisServer,
                                                         tmp_path: Path, secret_file: Path) -> None:
    with running(signed(gearmand, tmp_path, redis_server, secret_file)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        os.kill(min(pool.children()), 9)  # a child forked while the listener is connected
        children = pool.wait_registered(2)

        def holders() -> set[int]:
            out = subprocess.run(["ss", "-Htnp", "state", "established", f"dport = :{redis_server.port}"],
                                 capture_output=True, text=True, check=True).stdout
            return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}
        assert pool.proc is not None and pool.proc.pid in wait_for(holders, what="the master's connections")
        assert not holders() & children
        # and the master's connection outlived the children's closing of their copies:
        assert gm("gm-ctl", redis_server, secret_file, "set", "after", "1").returncode == 0
        wait_for(lambda: set(values_seen(gearmand, "after", 4).values()) == {"1"}, what="the value")


def test_an_operator_command_with_a_pools_redis_user_says_which_file_to_use(redis_server: RedisServer,
                                                                           tmp_path: Path) -> None:
    client = redis_server.client()
    client.acl_setuser("pool-beta", enabled=True, passwords=["+beta-password"], keys=["gearman-workers:*"],
                       commands=["+get", "+set", "+publish", "+time"], channels=["*"])
    config = tmp_path / "beta.toml"
    config.write_text(f'[control]\nredis_url = "redis://pool-beta:beta-password@127.0.0.1:{redis_server.port}/0"\n'
                      "allow_unsigned = true\n")
    result = run_cli("gm-exit", "--config", str(config), "--pool", "beta", "--wait")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "redis user 'pool-beta' may not do this" in line and "/etc/gearman-workers/control.toml" in line
    assert str(config) in line
    assert "/etc/gearman-workers/control.toml" in run_cli("gm-ctl", "--help").stdout
