"""Fleet control through a real redis-server: gm-exit, gm-ctl, signatures,
outages. Two pools with different names and host names stand for two hosts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

from helpers import (
    Gearmand,
    RedisServer,
    Relay,
    control_pool,
    heartbeat_up,
    operator_cli,
    run_cli,
    running,
    submit,
    values_seen,
    wait_for,
)


def ctl(redis_server: RedisServer, *args: str) -> str:
    """gm-ctl on the test's Redis, unsigned unless the test gives a secret;
    every live pool aimed at must apply it."""
    signing = () if "--secret-file" in args else ("--allow-unsigned",)
    result = operator_cli("gm-ctl", *args[:1], "--redis-url", redis_server.url, *signing, *args[1:])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def gm_exit(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess:
    signing = () if "--secret-file" in args else ("--allow-unsigned",)
    aim = () if "--pool" in args or "--host" in args else ("--all",)
    return operator_cli("gm-exit", "--redis-url", redis_server.url, *signing, *aim, *args)


def test_gm_exit_drains_two_pools_on_two_hosts(gearmand: Gearmand, redis_server: RedisServer,
                                               tmp_path: Path) -> None:
    first = control_pool(gearmand, tmp_path, redis_server.url, name="alpha", host="host-a")
    second = control_pool(gearmand, tmp_path, redis_server.url, name="beta", host="host-b")
    with running(first), running(second):
        wait_for(lambda: heartbeat_up(redis_server, first) and heartbeat_up(redis_server, second),
                 what="both heartbeats")
        result: dict[str, object] = {}
        client = threading.Thread(target=lambda: result.update(r=submit(gearmand, "slow", "1.5")))
        client.start()
        wait_for(lambda: gearmand.status()["slow"][1] == 1, what="the slow job to run")
        done = gm_exit(redis_server, "--wait", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        assert "host-a/alpha: applied\nhost-b/beta: applied\n" in done.stdout
        assert "host-a/alpha stopped" in done.stdout and "host-b/beta stopped" in done.stdout
        assert first.wait_exit() == 0 and second.wait_exit() == 0
        client.join(15)
        assert result["r"].result.startswith(b"slept 1.5s")  # type: ignore[attr-defined]


def test_gm_exit_pool_stops_only_that_pool(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    first = control_pool(gearmand, tmp_path, redis_server.url, name="alpha", host="host-a")
    second = control_pool(gearmand, tmp_path, redis_server.url, name="beta", host="host-b")
    with running(first), running(second):
        wait_for(lambda: heartbeat_up(redis_server, first) and heartbeat_up(redis_server, second),
                 what="both heartbeats")
        done = gm_exit(redis_server, "--pool", "beta", "--wait")
        assert done.returncode == 0, done.stderr
        assert "host-b/beta: applied" in done.stdout and "alpha" not in done.stdout.split("waiting")[0]
        assert second.wait_exit() == 0
        # alpha got the message too: prove it was handled (and ignored) by a later command.
        ctl(redis_server, "set", "marker", '"after"')
        wait_for(lambda: set(values_seen(gearmand, "marker", 4).values()) == {"'after'"}, what="the marker")
        assert first.proc.poll() is None  # type: ignore[union-attr]
        assert len(gearmand.workers("alpha")) == 2


def test_gm_ctl_set_reaches_every_child_and_respawned_ones(gearmand: Gearmand, redis_server: RedisServer,
                                                           tmp_path: Path) -> None:
    with running(control_pool(gearmand, tmp_path, redis_server.url, processes=3)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        assert ctl(redis_server, "set", "limit", '{"rate": 5}') == "host-a/alpha: applied\n"
        children = pool.children()

        def every_child_sees_it() -> bool:
            seen = values_seen(gearmand, "limit", 9)
            return set(seen) == children and set(seen.values()) == {"{'rate': 5}"}
        wait_for(every_child_sees_it, what="every child to see the value")
        victim = min(children)
        os.kill(victim, signal.SIGKILL)
        fresh = pool.wait_registered(3, exclude={victim}) - children
        assert len(fresh) == 1
        wait_for(lambda: fresh <= set(values_seen(gearmand, "limit", 9)), what="the new child to take jobs")
        assert set(values_seen(gearmand, "limit", 9).values()) == {"{'rate': 5}"}
        ctl(redis_server, "del", "limit", "--all")
        wait_for(lambda: set(values_seen(gearmand, "limit", 6).values()) == {"None"}, what="the delete")


def test_exit_published_while_cut_off_is_obeyed_on_reconnect(gearmand: Gearmand, redis_server: RedisServer,
                                                             tmp_path: Path) -> None:
    relay = Relay(redis_server.port)
    try:
        pool = control_pool(gearmand, tmp_path, f"redis://127.0.0.1:{relay.port}/0")
        with running(pool):
            wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
            relay.cut()
            wait_for(lambda: "unreachable" in pool.log(), what="the pool to notice the outage")
            done = gm_exit(redis_server, "--timeout", "2")
            assert done.returncode == 1  # the pool is aimed at (its heartbeat lives) and cannot answer
            assert "host-a/alpha: no answer within 2 s" in done.stdout
            assert submit(gearmand, "echo", b"cut off but serving").result == b"cut off but serving"
            relay.restore()
            assert pool.wait_exit(20) == 0
            assert "exit command recorded while redis was out of reach" in pool.log()
    finally:
        relay.close()


def test_a_pool_started_after_an_exit_keeps_running(gearmand: Gearmand, redis_server: RedisServer,
                                                    tmp_path: Path) -> None:
    done = gm_exit(redis_server)
    assert done.returncode == 1 and "no live pool is aimed at; kept for the pools that start later" in done.stdout
    with running(control_pool(gearmand, tmp_path, redis_server.url)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        # Commands are handled in order: once this value shows, an exit would have been acted on.
        ctl(redis_server, "set", "marker", "1")
        wait_for(lambda: set(values_seen(gearmand, "marker", 4).values()) == {"1"}, what="the marker")
        assert pool.proc.poll() is None  # type: ignore[union-attr]


def test_scale_follows_in_gearmand(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    with running(control_pool(gearmand, tmp_path, redis_server.url, processes=2)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        ctl(redis_server, "scale", "4", "--pool", "alpha")
        pool.wait_registered(4)
        ctl(redis_server, "scale", "1", "--all")
        pool.wait_registered(1)
        assert len(gearmand.workers("alpha")) == 1


def test_redis_restart_while_jobs_flow(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    with running(control_pool(gearmand, tmp_path, redis_server.url)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        answers: list[bytes] = []
        sent = [f"job {i}".encode() for i in range(300)]

        def flow() -> None:
            client = gearmand.client()
            for data in sent:
                answers.append(client.submit_job("echo", data, poll_timeout=10).result)
        jobs = threading.Thread(target=flow)
        jobs.start()
        wait_for(lambda: len(answers) > 20, what="jobs to flow")
        redis_server.stop(signal.SIGKILL)
        wait_for(lambda: "unreachable" in pool.log(), what="the pool to notice")
        redis_server.start()
        wait_for(lambda: "redis reachable again" in pool.log(), what="the reconnect")
        jobs.join(60)
        assert answers == sent  # every job answered, in order, none lost
        assert pool.log().count("unreachable") == 1  # logged once per outage
        ctl(redis_server, "set", "after", '"restart"')
        wait_for(lambda: set(values_seen(gearmand, "after", 4).values()) == {"'restart'"}, what="control again")


def test_bad_messages_are_rejected_and_disturb_nothing(gearmand: Gearmand, redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    with running(control_pool(gearmand, tmp_path, redis_server.url)) as pool:
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        children = pool.children()
        client = redis_server.client()
        bad = {b"\xff\xfe": "not UTF-8", b"{nope": "not JSON", b'{"cmd": 3}': "must be a string",
               b'{"cmd": "reboot"}': "unknown command", b'{"cmd": "scale", "n": -1}': "scale needs n",
               b"x" * 70000: "over the 65536-byte limit", b'["exit"]': "must be a JSON object"}
        for message in bad:
            client.publish("gearman-workers", message)
        ctl(redis_server, "set", "marker", "2")  # handled after every bad one
        wait_for(lambda: set(values_seen(gearmand, "marker", 4).values()) == {"2"}, what="the marker")
        log = pool.log()
        for reason in bad.values():
            assert reason in log
        assert pool.children() == children


def test_with_a_secret_only_signed_fresh_commands_work(gearmand: Gearmand, redis_server: RedisServer,
                                                       tmp_path: Path, secret_file: Path) -> None:
    pool = control_pool(gearmand, tmp_path, redis_server.url, "--secret-file", str(secret_file))
    with running(pool):
        wait_for(lambda: heartbeat_up(redis_server, pool), what="the heartbeat")
        client = redis_server.client()
        assert client.publish("gearman-workers", "exit") == 1  # the old, unsigned way
        listener = client.pubsub()
        listener.subscribe("gearman-workers")
        ctl(redis_server, "set", "marker", "3", "--secret-file", str(secret_file))
        captured = wait_for(lambda: listener.get_message(timeout=0.1, ignore_subscribe_messages=True),
                            what="the signed message")["data"]
        wait_for(lambda: set(values_seen(gearmand, "marker", 4).values()) == {"3"}, what="the marker")
        client.publish("gearman-workers", captured)  # a replay
        tampered = json.loads(captured) | {"cmd": "exit"}
        client.publish("gearman-workers", json.dumps(tampered))
        wait_for(lambda: "replayed message" in pool.log() and "bad signature" in pool.log(), what="rejections")
        assert "unsigned message" in pool.log()
        assert submit(gearmand, "echo", b"still serving").result == b"still serving"
        done = gm_exit(redis_server, "--secret-file", str(secret_file), "--wait")
        assert done.returncode == 0, done.stderr
        assert pool.wait_exit() == 0


def test_a_secret_readable_by_others_is_refused(tmp_path: Path, secret_file: Path) -> None:
    secret_file.chmod(0o644)
    result = run_cli("gearman-workers", "--task", "echo=tasks:echo", "--redis-url", "redis://127.0.0.1:1/0",
                     "--secret-file", str(secret_file), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "is accessible by group or others (mode 0644); chmod 600 it" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_pool_whose_redis_is_down_still_serves(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(control_pool(gearmand, tmp_path, "redis://127.0.0.1:1/0")) as pool:
        assert submit(gearmand, "echo", b"no redis").result == b"no redis"
        wait_for(lambda: "unreachable" in pool.log(), what="the outage warning")


def test_gm_exit_wait_times_out_naming_the_pool(redis_server: RedisServer) -> None:
    # A heartbeat of a pool that will not stop (nobody listens for it).
    redis_server.client().set("gearman-workers:pool:h9:stuck",
                              json.dumps({"host": "h9", "name": "stuck", "pid": 1, "started": 1.0, "reported": 1.0,
                                             "desired": 1, "registered": 1, "autoscale": None, "children": []}),
                                  ex=60)
    done = gm_exit(redis_server, "--wait", "--timeout", "1")
    assert done.returncode == 1
    assert "still running: h9/stuck" in done.stderr
