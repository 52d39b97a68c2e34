"""What an operator sees of a real pool: Prometheus metrics, gm-ctl status,
process titles, the systemd notify and watchdog messages, and log lines
shaped for journald or for log shippers."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from helpers import (
    Gearmand,
    Pool,
    RedisServer,
    free_port,
    pool_config,
    run_cli,
    running,
    scrape,
    submit,
    value,
    wait_for,
)


def test_metrics_count_what_the_jobs_did(gearmand: Gearmand, tmp_path: Path) -> None:
    port = free_port()
    pool = Pool(gearmand, tmp_path, processes=2, config=pool_config(tmp_path, port))
    with running(pool):
        for n in range(7):
            assert submit(gearmand, "echo", f"x{n}").result == f"x{n}".encode()
        for _ in range(3):
            assert submit(gearmand, "fail", "on purpose").state == "FAILED"
        for _ in range(2):
            assert submit(gearmand, "nap", "5").state == "FAILED"  # its time limit is 0.3 s
        # A poison job: its runs kill two children, the third child refuses it.
        assert submit(gearmand, "segfault", "").state == "FAILED"
        pool.wait_registered(2)
        samples = wait_for(lambda: (s := scrape(port)) and value(s, "gearman_workers_children",
                                                                 state="idle") == 2 and s,
                           what="both children idle in the metrics")

    jobs = "gearman_workers_jobs_total"
    assert value(samples, jobs, task="echo", outcome="done") == 7
    assert value(samples, jobs, task="echo", outcome="failed") == 0
    assert value(samples, jobs, task="fail", outcome="failed") == 3
    assert value(samples, jobs, task="nap", outcome="timeout") == 2
    assert value(samples, jobs, task="segfault", outcome="poison") == 1
    assert value(samples, "gearman_workers_job_duration_seconds_count", task="echo") == 7
    assert value(samples, "gearman_workers_job_duration_seconds_bucket", task="echo", le="+Inf") == 7
    assert 0.6 <= value(samples, "gearman_workers_job_duration_seconds_sum", task="nap") < 2.0
    assert value(samples, "gearman_workers_job_duration_seconds_bucket", task="nap", le="0.25") == 0
    assert value(samples, "gearman_workers_child_exits_total", reason="crash") == 2
    assert value(samples, "gearman_workers_child_exits_total", reason="killed") == 0
    assert value(samples, "gearman_workers_children_desired") == 2
    assert value(samples, "gearman_workers_children", state="busy") == 0
    assert value(samples, "gearman_workers_gearmand_up", server=gearmand.address) == 1
    assert value(samples, "gearman_workers_children_registered", server=gearmand.address) == 2
    assert value(samples, "gearman_workers_control_up") is None  # no control channel configured
    ours = [labels for (name, labels) in samples if name.startswith("gearman_workers_")]
    assert ours and all({"pool": "test", "host": socket.gethostname().split(".")[0]}.items() <= dict(labels).items()
                        for labels in ours)


def test_a_killed_childs_counts_are_kept(gearmand: Gearmand, tmp_path: Path) -> None:
    port = free_port()
    pool = Pool(gearmand, tmp_path, processes=1, config=pool_config(tmp_path, port))
    with running(pool):
        for _ in range(5):
            submit(gearmand, "echo", "x")
        # A child counts a job right after its answer: the client may hear first.
        wait_for(lambda: value(scrape(port), "gearman_workers_jobs_total", task="echo", outcome="done") == 5,
                 what="the five jobs counted")
        (child,) = pool.children()
        os.kill(child, signal.SIGKILL)
        pool.wait_registered(1, exclude={child})
        samples = scrape(port)
    assert value(samples, "gearman_workers_jobs_total", task="echo", outcome="done") == 5
    assert value(samples, "gearman_workers_child_exits_total", reason="killed") == 1


def test_a_taken_metrics_port_is_a_config_error(gearmand: Gearmand, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        pool = Pool(gearmand, tmp_path, processes=1, config=pool_config(tmp_path, port))
        pool.start(wait=False)
        try:
            assert pool.wait_exit() == 2
        finally:
            pool.stop()
    assert f"[metrics] listen: cannot listen on 127.0.0.1:{port}: Address already in use" in pool.log()


def test_status_lists_every_child_with_its_job(gearmand: Gearmand, redis_server: RedisServer,
                                                  tmp_path: Path) -> None:
    port = free_port()
    pool = Pool(gearmand, tmp_path, processes=2, config=pool_config(tmp_path, port, redis_server.url))
    with running(pool):
        for _ in range(4):
            submit(gearmand, "echo", "x")
        submit(gearmand, "fail", "x")
        busy = threading.Thread(target=submit, args=(gearmand, "slow", "4"))
        busy.start()
        try:
            def status() -> dict | None:
                result = run_cli("gm-ctl", "status", "--json", "--redis-url", redis_server.url, "--pool", "test")
                assert result.returncode == 0, result.stderr
                document = json.loads(result.stdout)
                children = document["children"]
                counted = sum(c["jobs_done"] + c["jobs_failed"] for c in children)
                return document if any(c["state"] == "busy" for c in children) and counted == 5 else None

            document = wait_for(status, what="gm-ctl status to show the jobs and the busy child")
            table = run_cli("gm-ctl", "status", "--redis-url", redis_server.url, env=os.environ | {"COLUMNS": "150"})
            metrics = scrape(port)
        finally:
            busy.join(30)
        children = document["children"]
        assert {c["pid"] for c in children} == pool.children()
        assert {c["master"] for c in children} == {pool.proc.pid}
        assert sum(c["jobs_done"] for c in children) == 4
        assert sum(c["jobs_failed"] for c in children) == 1
        (working,) = [c for c in children if c["state"] == "busy"]
        assert working["task"] == "slow" and working["job"].startswith("H:")
        assert 0 < working["busy_for"] < 5
        assert all(c["rss"] > 1_000_000 and c["age"] > 0 for c in children)
        assert document["pools"][0]["children"] == 2 and document["pools"][0]["desired"] == 2
        assert str(working["pid"]) in table.stdout and working["job"] in table.stdout
        assert value(metrics, "gearman_workers_control_up") == 1


def titles(pids: set[int]) -> set[str]:
    return {Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode() for pid in pids}


def test_ps_shows_master_and_children_by_role_and_job(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = Pool(gearmand, tmp_path, processes=2, config=pool_config(tmp_path))
    with running(pool):
        assert titles({pool.proc.pid}) == {"gearman-workers: master [test]"}
        wait_for(lambda: titles(pool.children()) == {"gearman-workers: child 0 [test] idle",
                                                     "gearman-workers: child 1 [test] idle"},
                 what="idle children's titles")
        busy = threading.Thread(target=submit, args=(gearmand, "slow", "2"))
        busy.start()
        try:
            wait_for(lambda: any(t.endswith("] busy slow") for t in titles(pool.children())),
                     what="a child titled busy slow")
        finally:
            busy.join(30)
        wait_for(lambda: all(t.endswith("] idle") for t in titles(pool.children())), what="idle again")


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)

    def next(self) -> tuple[float, str]:
        return time.monotonic(), self.sock.recv(4096).decode()


def test_systemd_hears_ready_and_a_steady_watchdog(gearmand: Gearmand, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    watchdog_usec = 2_000_000
    env = os.environ | {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec)}
    pool = Pool(gearmand, tmp_path, processes=2, config=pool_config(tmp_path), env=env)
    with running(pool):
        heard: list[tuple[float, str]] = []
        while not any("READY=1" in text for _, text in heard):
            heard.append(notify.next())
        kicks = []
        while len(kicks) < 8:
            at, text = notify.next()
            if "WATCHDOG=1" in text:
                kicks.append(at)
    assert any(f"MAINPID={pool.proc.pid}" in text for _, text in heard)
    gaps = [later - earlier for earlier, later in itertools.pairwise(kicks)]
    assert max(gaps) < watchdog_usec / 1e6 / 2, f"WATCHDOG=1 not at least twice per WATCHDOG_USEC: {gaps}"


def test_watchdog_meant_for_another_process_is_left_alone(gearmand: Gearmand, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    env = os.environ | {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}
    pool = Pool(gearmand, tmp_path, processes=1, config=pool_config(tmp_path), env=env)
    heard = []
    with running(pool):
        pool.signal(signal.SIGTERM)
        pool.wait_exit()
        notify.sock.settimeout(0.1)
        while True:
            try:
                heard.append(notify.next()[1])
            except TimeoutError:
                break
    assert any("READY=1" in text for text in heard)
    assert not any("WATCHDOG=1" in text for text in heard)


def journal_pool(gearmand: Gearmand, tmp_path: Path, *extra: str) -> Pool:
    """A pool whose stderr is a file that JOURNAL_STREAM names, as systemd
    names the journal's stream."""
    log = tmp_path / "test.log"
    log.touch()
    info = log.stat()
    env = os.environ | {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    return Pool(gearmand, tmp_path, *extra, processes=1, config=pool_config(tmp_path), env=env)


def test_journal_lines_carry_their_priority_and_no_timestamp(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = journal_pool(gearmand, tmp_path)
    with running(pool):
        submit(gearmand, "fail", "on purpose")
    lines = pool.log().splitlines()
    error_at = next(i for i, line in enumerate(lines) if "task fail failed on job" in line)
    assert lines[error_at].startswith("<3>ERROR gearman_workers.child child 0[")
    traceback_lines = lines[error_at + 1:error_at + 4]
    assert traceback_lines[0] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in traceback_lines)
    assert any(line.startswith("<6>INFO gearman_workers.master master[") for line in lines)
    assert not any(line[:4].isdigit() for line in lines)  # no timestamp of our own


@pytest.mark.parametrize("journal", [False, True])
def test_json_log_lines_for_shippers(gearmand: Gearmand, tmp_path: Path, journal: bool) -> None:
    extra = ("--log-format", "json")
    pool = journal_pool(gearmand, tmp_path, *extra) if journal else Pool(
        gearmand, tmp_path, *extra, processes=1, config=pool_config(tmp_path))
    with running(pool):
        (child,) = pool.children()
        submit(gearmand, "fail", "on purpose")
    entries = []
    for line in pool.log().splitlines():
        if journal:
            assert line[:3] in ("<6>", "<4>", "<3>", "<7>"), line
            line = line[3:]
        entries.append(json.loads(line))
    failure = next(e for e in entries if "task fail failed" in e["message"])
    assert failure["level"] == "error" and failure["role"] == "child 0" and failure["pid"] == child
    assert "RuntimeError: asked to fail with b'on purpose'" in failure["message"]
    assert any(e["role"] == "master" and e["level"] == "info" for e in entries)
    # ISO 8601, UTC, as log shippers parse it
    assert all(abs(datetime.datetime.fromisoformat(e["time"]).timestamp() - time.time()) < 300 for e in entries)
    assert all(e["time"].endswith("Z") for e in entries)


def test_text_log_lines_elsewhere_keep_their_timestamp(gearmand: Gearmand, tmp_path: Path) -> None:
    env = os.environ | {"JOURNAL_STREAM": "1:1"}  # a journal stream, but not our stderr
    pool = Pool(gearmand, tmp_path, processes=1, config=pool_config(tmp_path), env=env)
    with running(pool):
        pass
    first = pool.log().splitlines()[0]
    assert first[:4].isdigit() and " INFO gearman_workers.master master[" in first


def test_scrapes_are_served_while_slow_clients_hold_connections(gearmand: Gearmand, tmp_path: Path) -> None:
    port = free_port()
    with running(Pool(gearmand, tmp_path, processes=1, config=pool_config(tmp_path, port))) as pool:
        idle = socket.create_connection(("127.0.0.1", port))  # says nothing at all
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"G")  # and a byte now and then, as a trickling client would
        resets = []
        for _ in range(5):  # clients that vanish mid-request
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"GET /metr")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            resets.append(conn)
        for conn in resets:
            conn.close()  # an RST
        for _ in range(3):
            assert value(scrape(port), "gearman_workers_children_desired") == 1
            slow.sendall(b"E")
        idle.close()
        slow.close()
        assert "Traceback" not in pool.log()
