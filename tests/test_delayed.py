"""Delayed jobs (issue 24, point 1), against a real gearmand and redis-server:
kept in Redis, submitted by the fleet's jobs leader when due, exactly once,
with no help from gearmand's epoch jobs."""

from __future__ import annotations

import json
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from helpers import Gearmand, Pool, RedisServer, fleet_pool, operator_cli, wait_for

NOTED_TASKS = '''
import json, os, time, uuid
from pathlib import Path

RUNS = Path(os.environ["GW_TEST_RUNS"])

def note(worker, job):
    name = uuid.uuid4().hex
    (RUNS / ("." + name)).write_text(json.dumps({"t": time.time(), "unique": job.unique, "data": job.data.hex()}))
    os.rename(RUNS / ("." + name), RUNS / name)  # a reader never sees half a note
'''


def noting_pool(gearmand: Gearmand, redis_url: str, tmp_path: Path, name: str, host: str) -> Pool:
    return fleet_pool(gearmand, tmp_path, redis_url, "noted", NOTED_TASKS, 'note = "noted:note"', "runs",
                      name=name, host=host)


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("[!.]*")]


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def test_a_job_delayed_by_ten_seconds_runs_ten_seconds_later_with_its_payload_and_unique(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    pool = noting_pool(gearmand, redis_server.url, tmp_path, "alpha", "host-a")
    try:
        pool.start()
        binary = tmp_path / "payload.bin"
        binary.write_bytes(bytes(range(256)))
        sent = time.time()
        delayed = operator_cli("gm-ctl", "--redis-url", redis_server.url, "submit", "note", "hello", "--in", "10",
                               "--unique", "report-10")
        assert delayed.returncode == 0 and "due at" in delayed.stdout, delayed
        raw = operator_cli("gm-ctl", "--redis-url", redis_server.url, "submit", "note", "--payload-file",
                           str(binary), "--in", "1", "--priority", "high")
        assert raw.returncode == 0, raw
        wait_for(lambda: len(runs(tmp_path)) == 2, timeout=20, what="both delayed jobs to run")
        by_data = {bytes.fromhex(run["data"]): run for run in runs(tmp_path)}
        assert by_data.keys() == {b"hello", bytes(range(256))}  # payloads byte-exact
        late = by_data[b"hello"]["t"] - sent
        print(f"the job delayed by 10 s ran after {late:.2f} s")
        assert 9.0 <= late <= 11.0 and by_data[b"hello"]["unique"] == "report-10"
        refused = operator_cli("gm-ctl", "--redis-url", redis_server.url, "submit", "note", "x", "--in", "-1")
        assert refused.returncode == 2 and "delay -1.0: expected 0 to" in refused.stderr
    finally:
        pool.stop()


def test_a_thousand_delayed_jobs_all_run_once_on_time(gearmand: Gearmand, redis_server: RedisServer,
                                                      tmp_path: Path) -> None:
    from gearman_workers.jobs.keys import JobKeys
    from gearman_workers.jobs.later import keep

    pool = noting_pool(gearmand, redis_server.url, tmp_path, "alpha", "host-a")
    try:
        pool.start()
        client, keys, rng = redis_server.client(), JobKeys("gearman-workers"), random.Random(24)
        due = {}
        for number in range(1000):
            _, due[f"d{number}"] = keep(client, keys, "note", b"x", rng.uniform(0, 60), None, f"d{number}", "normal")
        wait_for(lambda: len(runs(tmp_path)) >= 1000, timeout=90, what="1,000 delayed jobs to run")
        seen = runs(tmp_path)
        lateness = [run["t"] - due[run["unique"]] for run in seen]
        print(f"1,000 delayed jobs: lateness p50 {statistics.median(lateness):.3f} s, p99 {p99(lateness):.3f} s, "
              f"max {max(lateness):.3f} s, earliest {min(lateness):+.3f} s")
        assert sorted(run["unique"] for run in seen) == sorted(due)  # each once
        assert min(lateness) > -0.05 and p99(lateness) < 1.0  # never early (clocks: one host), rarely late
    finally:
        pool.stop()


def test_delayed_jobs_run_once_when_the_leader_is_killed(gearmand: Gearmand, redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    from gearman_workers.jobs.keys import JobKeys
    from gearman_workers.jobs.later import keep

    pools = [noting_pool(gearmand, redis_server.url, tmp_path, name, host)
             for name, host in (("alpha", "host-a"), ("beta", "host-b"))]
    try:
        for pool in pools:
            pool.start()
        client, keys = redis_server.client(), JobKeys("gearman-workers")
        leader = wait_for(lambda: client.get(keys.leader), what="a jobs leader").decode()
        for number in range(300):
            keep(client, keys, "note", b"x", 2 + number / 100, None, f"k{number}", "normal")  # over 3 s
        wait_for(lambda: len(runs(tmp_path)) >= 100, timeout=20, what="the first runs")
        first = next(pool for pool in pools if leader.startswith(f"host-{pool.name[0]}/{pool.name}/"))
        first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]  # the leader, mid-stream
        first.proc.wait()  # type: ignore[union-attr]
        wait_for(lambda: len(runs(tmp_path)) >= 300, timeout=40, what="every delayed job to run")
        uniques = [run["unique"] for run in runs(tmp_path)]
        assert sorted(uniques) == sorted(f"k{n}" for n in range(300))  # each once
    finally:
        for pool in pools:
            pool.stop()
