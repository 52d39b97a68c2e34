"""Capacity that follows the queue, against real gearmands: a burst scales
the pool up, idleness scales it down, operators cannot push it out of its
bounds, dedicated children register only their task, and a gearmand that
is down does not stop the decisions taken on the others."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import gearman
import pytest

from gearman_workers.config import Server
from gearman_workers.queues import QueueWatcher
from helpers import (
    EXAMPLES,
    Gearmand,
    Pool,
    RedisServer,
    free_port,
    operator_cli,
    run_cli,
    running,
    scrape,
    submit,
    value,
    wait_for,
)


def autoscaled(gearmand: Gearmand, tmp_path: Path, low: int, high: int, after: float = 2,
               extra: str = "", tasks: str = "", servers: list[str] | None = None) -> Pool:
    config = tmp_path / "pool.toml"
    config.write_text(f'''[gearman]
connect_timeout = 1
[pool]
python_path = ["{EXAMPLES}"]
min_processes = {low}
max_processes = {high}
scale_down_after = {after}
{extra}
[tasks]
slow = "tasks:slow"
echo = "tasks:echo"
{tasks}''')
    pool = Pool(gearmand, tmp_path, config=config, processes=low)  # processes: where it starts
    if servers:
        pool.argv[pool.argv.index("--servers") + 1] = ",".join(servers)
    return pool


def shared_workers(gearmand: Gearmand) -> int:
    """Registered workers of pool `test` that take `slow` (the shared children)."""
    return sum(1 for _, _, functions in gearmand.workers("test") if "slow" in functions)


class Burst:
    """N slow jobs submitted at once, in the background; most registered
    shared workers seen while they run (sampled from gearmand)."""

    def __init__(self, gearmand: Gearmand, jobs: int, seconds: float = 0.5) -> None:
        self.gearmand, self.jobs, self.seconds = gearmand, jobs, seconds
        self.answers: list[bytes] = []
        self.most = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        client = gearman.GearmanClient([self.gearmand.address])
        requests = client.submit_multiple_jobs([{"task": "slow", "data": str(self.seconds)} for _ in range(self.jobs)],
                                               wait_until_complete=True, poll_timeout=120)
        self.answers = [r.result for r in requests if r.complete]
        self.done.set()

    def __enter__(self) -> Burst:
        self.thread.start()
        return self

    def watch(self) -> None:
        while not self.done.wait(0.05):
            self.most = max(self.most, shared_workers(self.gearmand))

    def __exit__(self, *exc: object) -> None:
        self.thread.join(120)


def test_a_burst_scales_up_and_idleness_scales_back_down(gearmand: Gearmand, tmp_path: Path) -> None:
    port = free_port()
    pool = autoscaled(gearmand, tmp_path, 1, 4, after=2, extra="", tasks="")
    pool.argv += ["--metrics-listen", f"127.0.0.1:{port}"]
    with running(pool):
        assert shared_workers(gearmand) == 1
        with Burst(gearmand, 40) as burst:
            started = time.monotonic()
            wait_for(lambda: shared_workers(gearmand) == 4, what="4 shared children for the burst")
            scaled_up = time.monotonic() - started
            burst.watch()
        emptied = time.monotonic()
        assert len(burst.answers) == 40 and burst.most == 4
        wait_for(lambda: shared_workers(gearmand) == 1, timeout=20, what="back to 1 child")
        back_down = time.monotonic() - emptied
        samples = scrape(port)
    assert scaled_up < 5, scaled_up
    assert 2 <= back_down < 2 + 6, back_down  # scale_down_after, then one child a second
    assert "autoscaling from 1 to 4 children:" in pool.log() and "job(s) waiting and all 1 children busy" in pool.log()
    assert pool.log().count("no job waiting for") == 3
    assert value(samples, "gearman_workers_autoscale_decisions_total", direction="up") == 1
    assert value(samples, "gearman_workers_autoscale_decisions_total", direction="down") == 3
    assert value(samples, "gearman_workers_children_max") == 4


def test_operators_cannot_push_an_autoscaling_pool_out_of_its_bounds(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    pool = autoscaled(gearmand, tmp_path, 1, 2, after=60,
                      extra=f'[control]\nredis_url = "{redis_server.url}"\nallow_unsigned = true\n')
    with running(pool):
        def refusals() -> int:
            return pool.log().count("refused: this pool autoscales between min_processes 1 and max_processes 2")

        for number, sig in enumerate((signal.SIGTTIN, signal.SIGTTIN, signal.SIGTTOU), start=1):
            pool.signal(sig)  # one at a time: pending signals of one kind merge into one
            wait_for(lambda number=number: refusals() == number, what=f"refusal {number}")
        wait_for(lambda: " test " in run_cli("gm-ctl", "pools", "--redis-url", redis_server.url).stdout,
                 what="the pool to listen on the control channel")  # a scale is not stored: it must hear it
        done = operator_cli("gm-ctl", "scale", "5", "--all", "--allow-unsigned", "--redis-url", redis_server.url)
        assert done.returncode == 1  # refused, and said so
        assert "/test: refused (autoscaling: this pool autoscales" in done.stdout
        assert shared_workers(gearmand) == 1
        with Burst(gearmand, 12) as burst:
            burst.watch()
        assert len(burst.answers) == 12 and burst.most == 2  # up, but only to max_processes


def test_dedicated_children_register_only_their_task(gearmand: Gearmand, tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(f'[pool]\npython_path = ["{EXAMPLES}"]\n[tasks]\nslow = "tasks:slow"\n'
                      'echo = { call = "tasks:echo", processes = 2 }\n'
                      'reverse = { call = "tasks:reverse", timeout = 5 }\n')
    pool = Pool(gearmand, tmp_path, config=config, processes=1)
    try:
        pool.start(wait=False)  # it has 3 children: wait for them here
        def layout() -> list[list[str]]:
            return sorted(sorted(f) for _, _, f in gearmand.workers("test"))

        # Waited for whole: gearmand may show a worker between two of its CAN_DOs.
        wait_for(lambda: layout() == [["echo"], ["echo"], ["reverse", "slow"]],
                 what="1 shared child and 2 that register only echo")
        dedicated = {pid for _, pid, f in gearmand.workers("test") if f == ["echo"]}
        assert submit(gearmand, "echo", "x").result == b"x"
        victim = min(dedicated)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: {pid for _, pid, f in gearmand.workers("test") if f == ["echo"]} - {victim}
                 and len([1 for _, _, f in gearmand.workers("test") if f == ["echo"]]) == 2
                 and victim not in gearmand.worker_pids("test"), what="a new dedicated child")
        def titles() -> list[str]:
            return sorted(Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()
                          for pid in pool.children())

        # gearmand lists a worker once it has read its CAN_DO; the child calls
        # itself idle once it has gearmand's answer: a moment later.
        wait_for(lambda: sorted(t.split("] ", 1)[1] for t in titles()) == ["echo only idle", "echo only idle", "idle"],
                 what=f"two 'echo only' children and a shared one in ps (now: {titles()})")
    finally:
        pool.stop()


def test_a_gearmand_that_is_down_does_not_stop_scaling(gearmand: Gearmand, tmp_path: Path) -> None:
    other = Gearmand(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other.start()
    pool = autoscaled(gearmand, tmp_path, 1, 3, after=60, servers=[gearmand.address, other.address])
    with running(pool):
        other.stop()
        wait_for(lambda: f"gearmand {other.address} does not answer admin status" in pool.log(),
                 what="the watcher to notice the stopped gearmand")
        with Burst(gearmand, 12) as burst:
            wait_for(lambda: shared_workers(gearmand) == 3, what="3 children registered on the live gearmand")
            burst.watch()
        assert len(burst.answers) == 12


def test_the_queue_watcher_survives_any_answer_and_logs_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    """gearmand's admin port as a hostile or broken peer would answer it."""
    answers = [b"echo\t\xc2\xb2\t0\t1\n.\n", b"echo\t" + b"9" * 5000 + b"\t0\t1\n.\n", b"\xff\xfe not a table",
               b"echo\t-1\t0\t1\n.\n", b"", b"echo\t5\t1\t1\n.\n"]
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for answer in answers:
            conn, _ = listener.accept()
            with conn:
                conn.recv(64)
                conn.sendall(answer)
    server = threading.Thread(target=serve)
    server.start()
    watcher = QueueWatcher([Server("127.0.0.1", listener.getsockname()[1])], ["echo"], ["echo"])
    with caplog.at_level(logging.INFO, logger="gearman_workers.queues"):
        depths = [watcher.poll(threading.Lock()) for _ in answers]
    server.join()
    listener.close()
    assert [(d.answered, d.waiting) for d in depths] == [(0, 0)] * 5 + [(1, 4)]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("does not answer admin status" in m for m in messages) == 1
    assert sum("answers admin status again" in m for m in messages) == 1
