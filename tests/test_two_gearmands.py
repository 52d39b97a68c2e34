"""A pool on two real gearmands: its per-server queue metrics, and what it
does when one of them dies or restarts (issue 26's figures, kept true)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from helpers import EXAMPLES, FailoverStream, Gearmand, Pool, free_port, port_open, scrape, value, wait_for


def pool_on(servers: list[Gearmand], tmp_path: Path, *extra: str, processes: int = 4) -> Pool:
    return Pool(servers[0], tmp_path, "--servers", ",".join(s.address for s in servers), *extra,
                name="both", processes=processes, config=EXAMPLES / "gearman-workers.toml")


def test_queues_per_server_and_task_are_metrics(two_gearmands: list[Gearmand], tmp_path: Path) -> None:
    port = free_port()
    pool = pool_on(two_gearmands, tmp_path, "--metrics-listen", f"127.0.0.1:{port}", processes=1)
    pool.start()
    try:
        wait_for(lambda: all(len(s.workers("both")) == 1 for s in two_gearmands), what="registered on both")
        first = two_gearmands[0].client()
        for _ in range(3):  # one runs, two wait: in the first server only
            first.submit_job("slow", "3", background=True, wait_until_complete=False)
        a, b = (server.address for server in two_gearmands)

        def seen() -> bool:
            samples = scrape(port)
            return [value(samples, f"gearman_workers_gearmand_{name}", server=server, task="slow")
                    for server in (a, b) for name in ("queued", "running", "workers")] == [2, 1, 1, 0, 0, 1]
        wait_for(seen, what="the per-server queues in the metrics")
        two_gearmands[1].stop(signal.SIGKILL)
        wait_for(lambda: value(scrape(port), "gearman_workers_gearmand_workers", server=b, task="slow") is None,
                 what="a server that does not answer to leave the metrics")
        assert value(scrape(port), "gearman_workers_gearmand_workers", server=a, task="slow") == 1
    finally:
        pool.stop()


def test_a_killed_gearmand_loses_no_job_and_the_other_keeps_every_worker(two_gearmands: list[Gearmand],
                                                                         tmp_path: Path) -> None:
    pool = pool_on(two_gearmands, tmp_path)
    pool.start()
    killed, other = two_gearmands
    try:
        wait_for(lambda: all(len(s.workers("both")) == 4 for s in two_gearmands), what="4 registered on both")
        fewest = []
        with FailoverStream([s.address for s in two_gearmands]) as stream:
            wait_for(lambda: stream.done > 200, what="the stream to flow")
            killed.stop(signal.SIGKILL)
            gone = time.monotonic()
            while time.monotonic() - gone < 2:
                fewest.append(len(other.workers("both")))
            killed.start()
            back = time.monotonic()
            wait_for(lambda: len(killed.workers("both")) == 4, what="4 registered again on the restarted one")
            again = time.monotonic() - back
            seen = stream.done
            wait_for(lambda: stream.done > seen + 200, what="the stream to go on")
        print(f"kill -9 of one gearmand: {stream.done} jobs, {stream.lost} lost; the other had at least "
              f"{min(fewest)} workers; 4 registered on the restarted one {again * 1000:.0f} ms after it listened")
        assert stream.lost == 0 and min(fewest) == 4 and port_open(killed.port)
    finally:
        pool.stop()


def test_a_graceful_rolling_restart_of_both_loses_no_job(two_gearmands: list[Gearmand], tmp_path: Path) -> None:
    """SIGUSR1: gearmand stops listening and leaves once its queue is empty; then it is started again,
    and the next one once the pool is registered on it."""
    pool = pool_on(two_gearmands, tmp_path)
    pool.start()
    try:
        wait_for(lambda: all(len(s.workers("both")) == 4 for s in two_gearmands), what="4 registered on both")
        with FailoverStream([s.address for s in two_gearmands]) as stream:
            for server in two_gearmands:
                target = stream.done + 200
                wait_for(lambda n=target: stream.done > n, what="the stream to flow")
                server.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
                server.proc.wait(30)  # type: ignore[union-attr]
                server.start()
                wait_for(lambda s=server: len(s.workers("both")) == 4, what="4 registered again")
            seen = stream.done
            wait_for(lambda: stream.done > seen + 200, what="the stream to go on")
        print(f"rolling SIGUSR1 restart of both: {stream.done} jobs, {stream.lost} lost")
        assert stream.lost == 0
    finally:
        pool.stop()


def test_jobs_queued_in_both_drain_from_both_at_once(two_gearmands: list[Gearmand], tmp_path: Path) -> None:
    """Each child sleeps in one server's GRAB at a time: neither server's queue may wait for the other's."""
    for server in two_gearmands:
        server.client().submit_multiple_jobs([{"task": "echo", "data": f"{n}"} for n in range(10_000)],
                                             background=True, wait_until_complete=False)
    pool = pool_on(two_gearmands, tmp_path)
    started = time.monotonic()
    pool.start(wait=False)
    try:
        emptied: dict[str, float] = {}
        while len(emptied) < 2:
            for server in two_gearmands:
                if server.address not in emptied and server.status().get("echo", (0, 0, 0))[:2] == (0, 0):
                    emptied[server.address] = time.monotonic() - started
            assert time.monotonic() - started < 120, emptied
        first, last = sorted(emptied.values())
        print(f"10,000 + 10,000 queued jobs: one server empty after {first:.2f} s, the other after {last:.2f} s")
        assert last / first < 1.5
    finally:
        pool.stop()
