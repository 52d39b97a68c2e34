"""Steering tasks (issue 23), against a real gearmand and redis-server with
several pools standing for hosts: pause and resume, cancel, and a task's
concurrency capped across the fleet."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    Gearmand,
    Pool,
    RedisServer,
    fleet_pool,
    free_port,
    heartbeat_up,
    operator_cli,
    pid_alive,
    scrape,
    value,
    wait_for,
)

STEERED_TASKS = '''
import json, os, signal, time, uuid
from pathlib import Path

MARKS = Path(os.environ["GW_TEST_RUNS"])

def _mark(kind, **fields):
    name = f"{kind}.{uuid.uuid4().hex}"
    (MARKS / ("." + name)).write_text(json.dumps(fields))
    os.rename(MARKS / ("." + name), MARKS / name)  # a reader never sees half a mark

def quick(worker, job):
    return job.data

def hold(worker, job):
    """Sleeps job.data seconds in Python: a cancel interrupts it."""
    _mark("started", handle=job.handle)
    try:
        time.sleep(float(job.data))
        return "slept"
    finally:
        _mark("finally", handle=job.handle, pid=os.getpid())

def hog(worker, job):
    """Stuck where no signal reaches it, as C code that masks signals is: no handler runs."""
    _mark("started", handle=job.handle)
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    time.sleep(float(job.data))

def fails(worker, job):
    _mark("failed", handle=job.handle, unique=job.unique)
    raise RuntimeError("fails on purpose")

def limited(worker, job):
    start = time.time()
    time.sleep(float(job.data))
    _mark("run", start=start, end=time.time(), pid=os.getpid())
    return "ok"
'''

PAUSE_TRIALS = CANCEL_TRIALS = 20
PROMPT = 0.5  # seconds: a pause, a resume's job, a cancel's answer (p99 of the trials)


def steered_pool(gearmand: Gearmand, redis_url: str, tmp_path: Path, name: str, host: str, processes: int = 2,
                 tasks: str = "", pool: str = "", metrics_port: int = 0) -> Pool:
    common = 'quick = "steered:quick"\nhold = "steered:hold"\nhog = "steered:hog"\n'
    return fleet_pool(gearmand, tmp_path, redis_url, "steered", STEERED_TASKS, common + tasks, "marks", name=name,
                      host=host, processes=processes, pool=pool, metrics_port=metrics_port)


def marks(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in (tmp_path / "marks").glob(f"{kind}.*")]


def sender(redis_server: RedisServer) -> Any:
    """What gm-ctl sends with, in this process: the trials time the command, not an interpreter's start."""
    from gearman_workers.control.send import Sender
    from gearman_workers.control.store import Keys

    return Sender(redis_server.client(), "gearman-workers", Keys("gearman-workers"), None, 15.0)


def offering(gearmand: Gearmand, pool: str, task: str) -> int:
    """How many of POOL's workers gearmand would hand a job of TASK."""
    return sum(task in functions for _, _, functions in gearmand.workers(pool))


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def started(pools: list[Pool], redis_server: RedisServer) -> list[Pool]:
    """Registered, and live in Redis: a command is answered by the pools whose heartbeat is there."""
    for pool in pools:
        pool.start(wait=False)
    for pool in pools:
        pool.wait_registered(pool.processes, timeout=20)
        wait_for(lambda p=pool: heartbeat_up(redis_server, p), what=f"{pool.name}'s heartbeat")
    return pools


@pytest.fixture
def fleet(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> Any:
    made: list[Pool] = []

    def make(*specs: tuple[str, str], **options: Any) -> list[Pool]:
        pools = [steered_pool(gearmand, redis_server.url, tmp_path, name, host, **options) for name, host in specs]
        made.extend(pools)
        return started(pools, redis_server)
    yield make
    for pool in made:
        pool.stop()


def test_a_paused_task_leaves_gearmand_within_half_a_second_and_comes_back_on_resume(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any) -> None:
    from gearman_workers.control import pause

    alpha, beta = fleet(("alpha", "host-a"), ("beta", "host-b"))
    send = sender(redis_server)
    took: dict[str, list[float]] = {"pause": [], "resume": []}
    for _ in range(PAUSE_TRIALS):
        for verb, wanted in (("pause", 0), ("resume", alpha.processes)):
            began = time.monotonic()
            answers = send.ask(pause.message(verb, "quick", hosts=("host-a",)))
            assert [ack.applied for ack in answers.values()] == [True], answers
            wait_for(lambda n=wanted: offering(gearmand, "alpha", "quick") == n, what=f"{verb} in gearmand")
            took[verb].append(time.monotonic() - began)
            assert offering(gearmand, "beta", "quick") == beta.processes  # not aimed at: untouched
            assert offering(gearmand, "alpha", "hold") == alpha.processes  # other tasks: untouched
    print(f"pause p99 {p99(took['pause']):.3f} s, resume p99 {p99(took['resume']):.3f} s")
    assert p99(took["pause"]) <= PROMPT and p99(took["resume"]) <= PROMPT


def test_a_job_waits_while_its_task_is_paused_and_a_new_pool_never_registers_it(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    from gearman_workers.control import pause

    port = free_port()
    fleet(("alpha", "host-a"), metrics_port=port)
    paused = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "pause", "quick")
    assert paused.returncode == 0 and "quick paused here" in paused.stdout, paused
    wait_for(lambda: offering(gearmand, "alpha", "quick") == 0, what="the pause")
    client = gearmand.client()
    waiting = client.submit_job("quick", "waited", wait_until_complete=False)
    wait_for(lambda: gearmand.status().get("quick", (0, 0, 0))[:2] == (1, 0), what="the job queued")
    assert client.submit_job("hold", "0", poll_timeout=10).result == b"slept"  # other tasks answered
    assert gearmand.status()["quick"][:2] == (1, 0)
    wait_for(lambda: "host-a/alpha: paused quick" in operator_cli("gm-ctl", "--redis-url", redis_server.url,
                                                                  "status").stdout,
             what="gm-ctl status to show the pause (heartbeats come every 2 s)")
    samples = scrape(port)
    assert value(samples, "gearman_workers_task_paused", task="quick") == 1
    assert value(samples, "gearman_workers_task_paused", task="hold") == 0
    assert value(samples, "gearman_workers_task_withheld_children", task="quick") == 2

    (gamma,) = fleet(("gamma", "host-c"))  # started while quick is paused: never offers it
    assert offering(gearmand, "gamma", "quick") == 0 and offering(gearmand, "gamma", "hold") == gamma.processes

    began = time.monotonic()
    answers = sender(redis_server).ask(pause.message("resume", "quick"))
    assert all(ack is not None and ack.applied for ack in answers.values()) and len(answers) == 2
    done = client.wait_until_jobs_completed([waiting], poll_timeout=10)[0]
    assert done.complete and done.result == b"waited"
    print(f"the waiting job ended {time.monotonic() - began:.3f} s after the resume")
    assert time.monotonic() - began <= PROMPT
    wait_for(lambda: offering(gearmand, "gamma", "quick") == gamma.processes, what="gamma offering quick")


def test_a_pool_restarted_while_redis_is_away_keeps_the_pause(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    from gearman_workers.control import pause

    (alpha,) = fleet(("alpha", "host-a"))
    sender(redis_server).ask(pause.message("pause", "quick"))
    wait_for(lambda: offering(gearmand, "alpha", "quick") == 0, what="the pause")
    redis_server.stop()
    alpha.stop()
    again = steered_pool(gearmand, redis_server.url, tmp_path, "alpha", "host-a")
    try:
        again.start()
        assert offering(gearmand, "alpha", "quick") == 0 and offering(gearmand, "alpha", "hold") == 2
        assert "tasks paused when this pool last heard: quick" in again.log()
    finally:
        again.stop()


def submitted(gearmand: Gearmand, task: str, data: str, unique: str | None = None) -> tuple[Any, Any]:
    """(the client, its request) of a job left to run: only that client hears its end."""
    client = gearmand.client()
    return client, client.submit_job(task, data, unique=unique, wait_until_complete=False)


def running(tmp_path: Path, count: int) -> None:
    """Wait until COUNT jobs have begun in task code (each marks its start once the slot names it)."""
    wait_for(lambda: len(marks(tmp_path, "started")) >= count, what=f"{count} job(s) begun")


def answered(job: tuple[Any, Any], timeout: float = 10) -> Any:
    client, request = job
    return client.wait_until_jobs_completed([request], poll_timeout=timeout)[0]


def cancel_trial(gearmand: Gearmand, send: Any, pool: Pool, task: str, number: int) -> tuple[float, float]:
    """Cancel a running 60 s job: (seconds to the client's failure, seconds more until the pool is whole)."""
    from gearman_workers.control import cancel

    unique = f"{task}-{number}"
    before = len(marks(pool.state_dir.parent, "started"))
    job = submitted(gearmand, task, "60", unique)
    request = job[1]
    running(pool.state_dir.parent, before + 1)
    by_unique = number % 2 == 1  # half the trials name the job by its unique, half by its handle
    began = time.monotonic()
    answers = send.ask(cancel.message(unique if by_unique else request.job.handle.decode(),
                                      cancel.UNIQUE if by_unique else cancel.HANDLE))
    assert sum(ack is not None and ack.detail.startswith(cancel.RUNNING_HERE) for ack in answers.values()) == 1
    done = answered(job)
    failed_after = time.monotonic() - began
    assert done.state == "FAILED", done
    if task == "hold":  # a task that lets go says why; gearmand's drop of a stuck one says nothing
        assert any(b"JobCancelled" in warning for warning in done.warning_updates), done.warning_updates
    pool.wait_registered(pool.processes)
    return failed_after, time.monotonic() - began - failed_after


def test_a_cancelled_job_fails_within_a_second_whether_its_task_lets_go_or_not(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    (alpha,) = fleet(("alpha", "host-a"), pool="kill_grace = 0.5\n")
    send = sender(redis_server)
    for task in ("hold", "hog"):
        trials = [cancel_trial(gearmand, send, alpha, task, number) for number in range(CANCEL_TRIALS)]
        answer, whole = p99([t[0] for t in trials]), p99([t[1] for t in trials])
        print(f"{task}: answered p99 {answer:.3f} s, pool whole again p99 {whole:.3f} s more")
        assert answer <= 1.0 and whole <= 1.0
    assert len(marks(tmp_path, "finally")) == CANCEL_TRIALS  # every hold ran its finally block
    assert alpha.log().count("did not give up cancelled job") == CANCEL_TRIALS  # every hog's child killed
    assert gearmand.status().get("hold", (0,))[0] == 0 and gearmand.status().get("hog", (0,))[0] == 0  # none again


def test_a_queued_job_is_dropped_and_its_client_told(gearmand: Gearmand, redis_server: RedisServer,
                                                      fleet: Any) -> None:
    (alpha,) = fleet(("alpha", "host-a"))
    busy = [submitted(gearmand, "hold", "60", f"busy-{n}") for n in range(alpha.processes)]
    running(alpha.state_dir.parent, alpha.processes)
    queued = submitted(gearmand, "hold", "60")
    handle = queued[1].job.handle.decode()
    wait_for(lambda: gearmand.status()["hold"][:2] == (3, 2), what="one job queued behind two")
    result = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "cancel", "--handle", handle)
    assert result.returncode == 0 and f"dropped queued job {handle}" in result.stdout, result
    assert answered(queued).state == "FAILED"
    for number, job in enumerate(busy):
        result = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "cancel",
                              "--unique", f"busy-{number}")
        assert result.returncode == 0 and "cancelling job" in result.stdout, result
        assert answered(job).state == "FAILED"
    # gearmand lists a dropped job until a worker asks for work, and then skips it: it never runs.
    assert gearmand.client().submit_job("quick", "after", poll_timeout=10).result == b"after"
    wait_for(lambda: gearmand.status()["hold"][0] == 0, what="the dropped job gone")
    assert len(marks(alpha.state_dir.parent, "started")) == 2  # the busy two; not the dropped one
    nowhere = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "cancel", "--unique", "x")
    assert nowhere.returncode == 1 and "runs in no pool" in nowhere.stdout


def test_a_cancelled_job_of_a_task_with_retries_is_not_retried(gearmand: Gearmand, redis_server: RedisServer,
                                                                fleet: Any) -> None:
    from gearman_workers.control import cancel

    tasks = 'again = { call = "steered:hold", retries = 2, retry_delay = 0.1, keep_results = 60 }'
    (alpha,) = fleet(("alpha", "host-a"), tasks=tasks)
    job = submitted(gearmand, "again", "60", unique="cancel-me")
    running(alpha.state_dir.parent, 1)
    sender(redis_server).ask(cancel.message("cancel-me", cancel.UNIQUE))
    assert answered(job).state == "FAILED"
    client = redis_server.client()
    def state() -> str | None:
        record = client.get("gearman-workers:jobs:result:cancel-me")
        return json.loads(record)["state"] if record else None
    wait_for(lambda: state() not in (None, "running"), what="the job's record to end")
    assert state() == "cancelled"
    assert client.zcard("gearman-workers:jobs:due") == 0 and client.zcard("gearman-workers:jobs:dead") == 0
    assert not list((alpha.state_dir).rglob("*.failure"))  # nothing spooled for a retry


def test_a_job_waiting_for_its_retry_is_cancelled_by_its_id_and_never_runs_again(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    tasks = 'fails = { call = "steered:fails", retries = 3, retry_delay = 600 }'
    fleet(("alpha", "host-a"), tasks=tasks)
    gearmand.client().submit_job("fails", "x", unique="wait-1", background=True, wait_until_complete=False)
    client = redis_server.client()
    due = wait_for(lambda: client.zrange("gearman-workers:jobs:due", 0, -1), what="the retry scheduled")
    chain = due[0].decode()
    result = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "cancel", "--job", chain)
    assert result.returncode == 0 and f"cancelled job {chain}: its next run will not happen" in result.stdout, result
    assert client.zcard("gearman-workers:jobs:due") == 0
    assert client.hget(f"gearman-workers:jobs:chain:{chain}", "state") == b"cancelled"
    # A submission of the next run made before the cancel (the leader's, in flight) does nothing:
    gearmand.client().submit_job("fails", "x", unique=f"gw:{chain}:2", background=True, wait_until_complete=False)
    wait_for(lambda: gearmand.status().get("fails", (1,))[0] == 0, what="the late submission answered")
    assert len(marks(tmp_path, "failed")) == 1
    again = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "cancel", "--job", chain)
    assert again.returncode == 1 and f"job {chain} is cancelled: no run waits" in again.stdout, again


def overlap(runs: list[dict[str, Any]]) -> int:
    """The most runs under way at one moment, from the runs' own start and end times."""
    edges = sorted([(run["start"], 1) for run in runs] + [(run["end"], -1) for run in runs])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_three_pools_never_run_more_than_the_tasks_concurrency(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    jobs, seconds, limit = 200, 0.1, 2
    pools = fleet(("alpha", "host-a"), ("beta", "host-b"), ("gamma", "host-c"), processes=3,
                  tasks=f'limited = {{ call = "steered:limited", concurrency = {limit} }}')
    tokens = redis_server.client()
    wait_for(lambda: tokens.zcard("gearman-workers:tasks:limited:tokens") == limit, what="the tokens held")
    assert sum(offering(gearmand, pool.name, "limited") for pool in pools) == limit
    client = gearmand.client()
    began = time.monotonic()
    requests = client.submit_multiple_jobs([{"task": "limited", "data": str(seconds)} for _ in range(jobs)],
                                           poll_timeout=60)
    wall = time.monotonic() - began
    assert all(request.complete for request in requests)
    runs = marks(tmp_path, "run")
    ideal = jobs * seconds / limit
    print(f"{jobs} jobs in {wall:.2f} s (ideal {ideal:.2f} s, ratio {wall / ideal:.3f}); most at once "
          f"{overlap(runs)}")
    assert len(runs) == jobs and overlap(runs) <= limit
    assert wall <= ideal * 1.15

    holder = tokens.zrange("gearman-workers:tasks:limited:tokens", 0, 0)[0].decode()
    pid = int(holder.rsplit("/", 1)[1])
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: holder.encode() not in tokens.zrange("gearman-workers:tasks:limited:tokens", 0, -1),
             timeout=5, what="the killed child's token to be free")
    print(f"the killed child's token was free {time.monotonic() - killed:.2f} s after the kill (ttl 5 s)")
    assert not pid_alive(pid)
    wait_for(lambda: tokens.zcard("gearman-workers:tasks:limited:tokens") == limit, what="the token taken again")
    again = client.submit_job("limited", str(seconds), poll_timeout=10)
    assert again.complete


def test_a_pool_where_a_limited_task_is_paused_gives_its_tokens_to_the_others(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any) -> None:
    from gearman_workers.control import pause

    limited = 'limited = { call = "steered:limited", concurrency = 2 }'
    fleet(("alpha", "host-a"), tasks=limited)  # first: it takes both tokens
    tokens = redis_server.client()
    wait_for(lambda: offering(gearmand, "alpha", "limited") == 2, what="alpha holding both tokens")
    fleet(("beta", "host-b"), tasks=limited)
    assert offering(gearmand, "beta", "limited") == 0
    sender(redis_server).ask(pause.message("pause", "limited", hosts=("host-a",)))
    wait_for(lambda: offering(gearmand, "beta", "limited") == 2, what="beta taking the paused pool's tokens")
    members = {m.decode() for m in tokens.zrange("gearman-workers:tasks:limited:tokens", 0, -1)}
    assert len(members) == 2 and all(m.startswith("host-b/beta/") for m in members), members
    assert offering(gearmand, "alpha", "limited") == 0


def test_a_reload_that_gives_a_task_a_concurrency_applies_it_as_the_children_are_replaced(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    (alpha,) = fleet(("alpha", "host-a"), tasks='limited = "steered:limited"')
    assert offering(gearmand, "alpha", "limited") == 2
    config = tmp_path / "alpha.toml"
    config.write_text(config.read_text().replace('limited = "steered:limited"',
                                                 'limited = { call = "steered:limited", concurrency = 1 }'))
    alpha.signal(signal.SIGHUP)
    tokens = redis_server.client()
    wait_for(lambda: offering(gearmand, "alpha", "limited") == 1 and len(alpha.children()) == 2
             and tokens.zcard("gearman-workers:tasks:limited:tokens") == 1, timeout=20,
             what="one child of the reloaded pool offering the limited task")


def test_with_redis_away_a_pool_keeps_its_share_and_logs_it_once(
        gearmand: Gearmand, redis_server: RedisServer, fleet: Any, tmp_path: Path) -> None:
    (alpha, beta) = fleet(("alpha", "host-a"), ("beta", "host-b"), processes=3,
                          tasks='limited = { call = "steered:limited", concurrency = 3 }')
    tokens = redis_server.client()
    wait_for(lambda: tokens.zcard("gearman-workers:tasks:limited:pools") == 2, what="both pools seen")
    wait_for(lambda: tokens.zcard("gearman-workers:tasks:limited:tokens") == 3, what="the tokens held")
    redis_server.stop()
    # Each keeps what it holds, up to its share of 3 over the pools it last saw (logged): never more than 3 in all.
    wait_for(lambda: all("share of its concurrency" in pool.log() for pool in (alpha, beta)), what="the log")
    for pool in (alpha, beta):
        assert pool.log().count("share of its concurrency") == 1
        mine = int(re.search(r"and rate: limited (\d) of 3", pool.log()).group(1))  # type: ignore[union-attr]
        wait_for(lambda p=pool, n=mine: offering(gearmand, p.name, "limited") <= n, what=f"{pool.name}'s share")
    assert offering(gearmand, "alpha", "limited") + offering(gearmand, "beta", "limited") <= 3
    threads = [threading.Thread(target=gearmand.client().submit_job, args=("limited", "0.05"),
                                kwargs={"poll_timeout": 20}) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(marks(tmp_path, "run")) == 12 and overlap(marks(tmp_path, "run")) <= 3


def test_a_tasks_jobs_start_at_its_rate_across_the_fleet(gearmand: Gearmand, redis_server: RedisServer,
                                                          fleet: Any, tmp_path: Path) -> None:
    jobs, per_second = 60, 10
    pools = fleet(("alpha", "host-a"), ("beta", "host-b"),
                  tasks=f'paced = {{ call = "steered:limited", rate = "{per_second}/s" }}')
    children = sum(pool.processes for pool in pools)
    wait_for(lambda: sum(offering(gearmand, pool.name, "paced") for pool in pools) == children,
             what="every child holding a permit")  # one each: the most a quiet spell saves up
    requests = gearmand.client().submit_multiple_jobs([{"task": "paced", "data": "0.01"} for _ in range(jobs)],
                                                      poll_timeout=30)
    assert all(request.complete for request in requests)
    starts = sorted(run["start"] for run in marks(tmp_path, "run"))
    steady = starts[children:]  # after the burst of the permits saved up
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    busiest = max(sum(1 for t in starts if begin <= t < begin + 1) for begin in starts)
    print(f"{jobs} jobs: {rate:.2f} starts/s after the first {children} (rate {per_second}/s); "
          f"busiest second {busiest}")
    assert len(starts) == jobs
    assert abs(rate - per_second) <= per_second * 0.05
    assert busiest <= per_second + children


def test_a_pool_with_the_roles_acl_user_holds_tokens_permits_and_pauses(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    """The redis role's rules for a pool user (plugins/filter/acl.py) let a pool do all of the above."""
    import redis

    from gearman_workers.control import pause
    from helpers import load_script

    rules = load_script("plugins/filter/acl.py").pool_acl_rules("host-a", "gearman-workers", "gearman-workers")
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "pool-host-a", "on", ">pool-password", *rules.split())
    url = f"redis://pool-host-a:pool-password@127.0.0.1:{redis_server.port}/0"
    tasks = 'paced = { call = "steered:limited", rate = "20/s", concurrency = 1 }'
    pool = steered_pool(gearmand, url, tmp_path, "alpha", "host-a", tasks=tasks)
    try:
        pool.start()
        wait_for(lambda: offering(gearmand, "alpha", "paced") == 1, what="a token and a permit")
        assert gearmand.client().submit_job("paced", "0", poll_timeout=10).complete
        sender(redis_server).ask(pause.message("pause", "quick"))
        wait_for(lambda: offering(gearmand, "alpha", "quick") == 0, what="the pause")
        assert admin.zcard("gearman-workers:tasks:paced:tokens") == 1
        assert admin.pttl("gearman-workers:tasks:paced:rate") > 0
        assert "NOPERM" not in pool.log() and "governor failed" not in pool.log()
    finally:
        pool.stop()
    user = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.set("gearman-workers:tasks:paced:rate", "0")  # the rate key: only with an expiry
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.hset("gearman-workers:pause:all", "quick", "x")  # pauses: read only
