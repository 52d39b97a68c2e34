"""Periodic schedules (issue 24, points 2 to 4), against a real gearmand and
redis-server, with pools standing for hosts: each slot fired once by the
fleet's jobs leader, through leader deaths and a Redis restart.

The task the schedules submit runs in a pool of its own without fleet
control (it can never lead): killing a leader never kills a run, so a run
seen twice would be a slot fired twice, nothing else."""

from __future__ import annotations

import collections
import datetime
import json
import re
import signal
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from helpers import Gearmand, Pool, RedisServer, fleet_pool, free_port, operator_cli, wait_for
from test_delayed import NOTED_TASKS, runs

HOSTS = (("alpha", "host-a"), ("beta", "host-b"), ("gamma", "host-c"))
MISSED = re.compile(r"schedule (\S+): (\d+) slot\(s\) from (\S+ \S+) UTC to (\S+ \S+) UTC missed")


def noting_worker(gearmand: Gearmand, tmp_path: Path) -> Pool:
    (tmp_path / "noted.py").write_text(NOTED_TASKS)
    (tmp_path / "runs").mkdir(exist_ok=True)
    config = tmp_path / "worker.toml"
    config.write_text(f'[pool]\npython_path = ["{tmp_path}"]\n[tasks]\nnote = "noted:note"\n')
    return Pool(gearmand, tmp_path, name="worker", processes=2, config=config,
                env={"PATH": "/usr/bin:/bin", "GW_TEST_RUNS": str(tmp_path / "runs")})


def scheduling_pools(gearmand: Gearmand, redis_url: str, tmp_path: Path, schedules: str,
                     hosts: tuple[tuple[str, str], ...] = HOSTS, ports: list[int] | None = None) -> list[Pool]:
    return [fleet_pool(gearmand, tmp_path, redis_url, "noted", NOTED_TASKS, 'echo = "tasks:echo"', "runs",
                       name=name, host=host, processes=1, schedules=schedules,
                       metrics_port=ports[index] if ports else 0) for index, (name, host) in enumerate(hosts)]


def slot_of(run: dict[str, Any]) -> tuple[str, float]:
    name, _, when = run["unique"].partition("@")
    return name, datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def fired(tmp_path: Path, name: str) -> list[float]:
    """The slots of schedule NAME that ran, in order (twice if twice)."""
    return sorted(slot for schedule, slot in map(slot_of, runs(tmp_path)) if schedule == name)


def leader_of(redis_server: RedisServer, pools: list[Pool]) -> Pool | None:
    raw = redis_server.client().get("gearman-workers:jobs:leader")
    if raw is None:
        return None
    name = raw.decode().split("/")[1]  # the lease's token: HOST/POOL/PID/RANDOM
    return next((pool for pool in pools if pool.name == name and pool.proc and pool.proc.poll() is None), None)


def drained(gearmand: Gearmand) -> bool:
    return gearmand.status().get("note", (0, 0, 0))[:2] == (0, 0)


def stop_all(pools: list[Pool]) -> None:
    for pool in pools:
        pool.stop()


def scraped(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def series(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_three_pools_fire_each_slot_of_a_minute_once_and_on_time(gearmand: Gearmand, redis_server: RedisServer,
                                                                 tmp_path: Path) -> None:
    worker = noting_worker(gearmand, tmp_path)
    ports = [free_port() for _ in HOSTS]
    pools = scheduling_pools(gearmand, redis_server.url, tmp_path, 'tick = { task = "note", every = 1, '
                             'payload = "tick" }', ports=ports)
    try:
        for pool in [worker, *pools]:
            pool.start()
        first = wait_for(lambda: fired(tmp_path, "tick"), what="the first slot")[0]
        wait_for(lambda: fired(tmp_path, "tick")[-1] >= first + 60, timeout=90, what="a minute of slots")
        listed = operator_cli("gm-ctl", "--redis-url", redis_server.url, "schedule", "list", "--json")
        assert listed.returncode == 0, listed
        document = json.loads(listed.stdout)
        leader = leader_of(redis_server, pools)
        assert leader is not None
        figures = [scraped(port) for port in ports]
    finally:
        stop_all(pools)
    wait_for(lambda: drained(gearmand), what="the last slots to run")
    worker.stop()
    slots = fired(tmp_path, "tick")
    assert [slot for slot, n in collections.Counter(slots).items() if n > 1] == []  # none twice
    assert slots == [first + n for n in range(len(slots))] and len(slots) >= 61  # none missed
    lag = [run["t"] - slot_of(run)[1] for run in runs(tmp_path)]
    p99 = statistics.quantiles(lag, n=100, method="inclusive")[98]
    print(f"{len(slots)} slots by 3 pools: run time minus slot time p50 {statistics.median(lag):.3f} s, "
          f"p99 {p99:.3f} s, max {max(lag):.3f} s")
    assert p99 < 1.0
    row = document["schedules"][0]
    assert document["leader"].endswith(f"/{leader.name}") and row["name"] == "tick" and row["task"] == "note"
    assert row["last_by"].endswith(f"/{leader.name}") and row["next_due"] > row["last_slot"]
    assert sorted(row["published_by"]) == sorted(f"{host}/{name}" for name, host in HOSTS)
    assert sum(series(text, "gearman_workers_leader{") for text in figures) == 1
    assert sum(series(text, "gearman_workers_schedule_fired_total{") for text in figures) >= 61


def test_no_slot_twice_while_the_leader_is_killed_twice(gearmand: Gearmand, redis_server: RedisServer,
                                                        tmp_path: Path) -> None:
    worker = noting_worker(gearmand, tmp_path)
    pools = scheduling_pools(gearmand, redis_server.url, tmp_path,
                             'skipping = { task = "note", every = 1 }\n'
                             'catching = { task = "note", every = 1, catch_up = "once" }')
    took_over = []
    try:
        for pool in [worker, *pools]:
            pool.start()
        for _ in range(2):
            leader = wait_for(lambda: leader_of(redis_server, pools), what="a leader")
            wanted = len(runs(tmp_path)) + 10
            wait_for(lambda n=wanted: len(runs(tmp_path)) >= n, what="slots fired by this leader")
            leader.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            killed = time.monotonic()
            leader.proc.wait()  # type: ignore[union-attr]
            successor = wait_for(lambda: leader_of(redis_server, pools), what="the next leader")
            took_over.append(time.monotonic() - killed)
            assert "this pool is now the jobs leader" in successor.log()
        seen = len(runs(tmp_path))
        wait_for(lambda: len(runs(tmp_path)) >= seen + 10, what="slots fired by the last leader")
        logs = "".join(pool.log() for pool in pools)
    finally:
        stop_all(pools)
    wait_for(lambda: drained(gearmand), what="the last slots to run")
    worker.stop()
    print(f"took over after {', '.join(f'{s:.1f} s' for s in took_over)}")
    assert max(took_over) <= 5.0
    logged: dict[str, list[tuple[int, float, float]]] = collections.defaultdict(list)
    for name, count, low, high in MISSED.findall(logs):
        logged[name].append((int(count), *(stamp(text) for text in (low, high))))
    for name in ("skipping", "catching"):
        slots = fired(tmp_path, name)
        assert [slot for slot, n in collections.Counter(slots).items() if n > 1] == [], name  # none twice
        gaps = set(range(int(slots[0]), int(slots[-1]) + 1)) - set(map(int, slots))
        said = {int(low) + n for count, low, _ in logged[name] for n in range(count)}
        ran_late = {int(high) for _, _, high in logged[name]} if name == "catching" else set()
        print(f"{name}: {len(slots)} slots ran, {len(gaps)} missed, {len(ran_late)} caught up: {logged[name]}")
        assert gaps == said - ran_late  # every slot missed was said; with catch_up = once the newest ran
        assert ran_late <= set(map(int, slots))
        assert said and (ran_late if name == "catching" else gaps)  # two kills: something was missed


def stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()


def test_a_redis_restart_fires_no_slot_twice_and_the_schedule_goes_on(gearmand: Gearmand, redis_server: RedisServer,
                                                                      tmp_path: Path) -> None:
    """A Redis without persistence: the restart loses every record, the lease too."""
    worker = noting_worker(gearmand, tmp_path)
    pools = scheduling_pools(gearmand, redis_server.url, tmp_path, 'tick = { task = "note", every = 1 }', HOSTS[:2])
    try:
        for pool in [worker, *pools]:
            pool.start()
        wait_for(lambda: len(fired(tmp_path, "tick")) >= 5, what="the first slots")
        redis_server.stop(signal.SIGKILL)
        wait_for(lambda: all("unreachable for the job keeper" in pool.log() for pool in pools), what="the outage")
        redis_server.start()
        back = time.time()
        first_after = wait_for(lambda: [slot for slot in fired(tmp_path, "tick") if slot >= back], timeout=10,
                               what="a slot after Redis is back")[0]
        wait_for(lambda: fired(tmp_path, "tick")[-1] >= first_after + 5, what="five more slots")
    finally:
        stop_all(pools)
    wait_for(lambda: drained(gearmand), what="the last slots to run")
    worker.stop()
    slots = fired(tmp_path, "tick")
    print(f"first slot after Redis was back: {first_after - back:.2f} s later")
    assert [slot for slot, n in collections.Counter(slots).items() if n > 1] == []  # none twice
    assert first_after - back <= 5.0
