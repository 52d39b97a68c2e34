"""Jobs beyond one attempt, against a real gearmand and redis-server:
retries on their back-off curve, dead letters, result records, and the
fleet leader that moves due runs to gearmand exactly once."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from helpers import (
    Gearmand,
    Pool,
    RedisServer,
    fleet_pool,
    free_port,
    run_cli,
    running,
    scrape,
    submit,
    value,
    wait_for,
)

JOB_TASKS = '''
import hashlib, json, os, time, uuid
from pathlib import Path
from gearman_workers import Permanent

RUNS = Path(os.environ["GW_TEST_RUNS"])

def _runs_before(job):
    return len(list(RUNS.glob(f"{job.task}.{hashlib.sha1(job.data).hexdigest()}.*")))

def _note(job, what):
    # One file per run, renamed into place: a run never reads another's half-written note.
    name = f"{job.task}.{hashlib.sha1(job.data).hexdigest()}.{uuid.uuid4().hex}"
    (RUNS / ("." + name)).write_text(json.dumps({"t": time.time(), "unique": job.unique,
                                                 "data": job.data.hex(), "what": what}))
    os.rename(RUNS / ("." + name), RUNS / name)

def flaky(worker, job):
    """Fails its first 3 runs of a payload, then returns it reversed."""
    runs = _runs_before(job)
    _note(job, "run")
    if runs < 3:
        raise RuntimeError(f"failure number {runs + 1}")
    return job.data[::-1]

def broken(worker, job):
    _note(job, "run")
    raise ValueError("always broken")

def hopeless(worker, job):
    _note(job, "run")
    raise Permanent("bad input: cannot get better")

def echo(worker, job):
    _note(job, "run")
    return job.data
'''


def job_pool(gearmand: Gearmand, redis_url: str, tmp_path: Path, tasks: str, *extra: str,
             name: str = "jobs", host: str = "host-a", processes: int = 2) -> Pool:
    return fleet_pool(gearmand, tmp_path, redis_url, "jobtasks", JOB_TASKS, tasks, "runs", *extra, name=name,
                      host=host, processes=processes)


def runs_of(tmp_path: Path, task: str) -> list[dict]:
    """Every run of TASK so far, in the order they began."""
    runs = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob(f"{task}.*")]
    return sorted(runs, key=lambda run: run["t"])


def submit_background(gearmand: Gearmand, task: str, data: bytes, unique: str) -> None:
    request = gearmand.client().submit_job(task, data, unique=unique, background=True, wait_until_complete=False)
    assert request.job.handle


def record(redis_server: RedisServer, unique: str) -> dict | None:
    from gearman_workers.results import read
    return read(redis_server.url, unique)


def gm_ctl(redis_server: RedisServer, *args: str) -> str:
    result = run_cli("gm-ctl", args[0], "--redis-url", redis_server.url, "--allow-unsigned", *args[1:])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_job_that_fails_three_times_runs_on_the_curve_and_ends_done(gearmand: Gearmand, redis_server: RedisServer,
                                                                     tmp_path: Path) -> None:
    tasks = 'flaky = { call = "jobtasks:flaky", retries = 3, retry_delay = 1, keep_results = 600 }'
    with running(job_pool(gearmand, redis_server.url, tmp_path, tasks)):
        submit_background(gearmand, "flaky", b"\x00payload\xff", "order-17")
        done = wait_for(lambda: (r := record(redis_server, "order-17")) and r["state"] == "done" and r,
                        timeout=30, what="the job's record to say done")
    runs = runs_of(tmp_path, "flaky")
    assert len(runs) == 4
    assert done["result"] == b"\xffdaolyap\x00" and done["attempt"] == 4
    gaps = [later["t"] - earlier["t"] for earlier, later in itertools.pairwise(runs)]
    for gap, planned in zip(gaps, (1, 2, 4), strict=True):
        assert planned * 0.9 <= gap <= planned * 1.1 + 1.0, gaps
    assert all(run["unique"] == "order-17" for run in runs)  # every run's task sees the client's unique


def test_a_job_that_always_fails_becomes_one_dead_letter(gearmand: Gearmand, redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    tasks = 'broken = { call = "jobtasks:broken", retries = 2, retry_delay = 1 }'
    payload = bytes(range(256))
    metrics_port = free_port()
    metrics = ("--metrics-listen", f"127.0.0.1:{metrics_port}")
    with running(job_pool(gearmand, redis_server.url, tmp_path, tasks, *metrics)):
        submit_background(gearmand, "broken", payload, "broken-1")
        listed = wait_for(lambda: json.loads(gm_ctl(redis_server, "dead", "list", "--json")) or None,
                          timeout=30, what="a dead letter")
        last_run = runs_of(tmp_path, "broken")[-1]["t"]
        assert len(runs_of(tmp_path, "broken")) == 3
        (letter,) = listed
        unsigned = run_cli("gm-ctl", "dead", "show", letter["id"], "--redis-url", redis_server.url)
        assert unsigned.returncode == 0 and "ValueError: always broken" in unsigned.stdout  # reading needs no secret
        assert letter["died"] - last_run <= 1.0
        shown = json.loads(gm_ctl(redis_server, "dead", "show", letter["id"], "--json"))
        assert bytes.fromhex(shown["payload_hex"]) == payload and shown["unique"] == "broken-1"
        assert shown["attempts"] == 3 and len(shown["runs"]) == 3
        assert all("ValueError: always broken" in run["error"] for run in shown["runs"])
        assert "Traceback" in shown["last_trace"] and "raise ValueError" in shown["last_trace"]
        assert shown["runs"][0]["host"] == "host-a" and shown["runs"][0]["pool"] == "jobs"
        wait_for(lambda: value(scrape(metrics_port), "gearman_workers_dead_jobs", task="broken") == 1,
                 what="the dead letter in the metrics")

        gm_ctl(redis_server, "dead", "retry", letter["id"])
        wait_for(lambda: len(runs_of(tmp_path, "broken")) == 4, what="the retried dead letter to run")
        wait_for(lambda: len(runs_of(tmp_path, "broken")) == 6 and json.loads(
            gm_ctl(redis_server, "dead", "list", "--json")), timeout=30, what="it to die again")
        (again,) = json.loads(gm_ctl(redis_server, "dead", "list", "--json"))
        gm_ctl(redis_server, "dead", "purge", again["id"])
        assert json.loads(gm_ctl(redis_server, "dead", "list", "--json")) == []
        wait_for(lambda: value(scrape(metrics_port), "gearman_workers_dead_jobs", task="broken") == 0,
                 what="the purge in the metrics")


ONCE = 'once = { call = "jobtasks:once", retries = 1, retry_delay = 2 }'
ONCE_TASK = '''

def once(worker, job):
    """Fails the first run of each payload, succeeds on the second."""
    earlier = _runs_before(job)
    _note(job, "run")
    if not earlier:
        raise RuntimeError("first run fails")
'''


def leader_pool(redis_server: RedisServer, pools: list[Pool]) -> Pool | None:
    """Which of POOLS holds the jobs leader's lease (None: none of them)."""
    token = redis_server.client().get("gearman-workers:jobs:leader")
    pid = int(token.decode().split("/")[2]) if token is not None else None
    return next((pool for pool in pools if pool.proc is not None and pool.proc.pid == pid), None)


def due_count(redis_server: RedisServer) -> int:
    return redis_server.client().zcard("gearman-workers:jobs:due")


@pytest.mark.parametrize("restart_redis", [False, True], ids=["leader-killed", "leader-killed-and-redis-restarted"])
def test_every_retry_runs_exactly_once_when_the_leader_is_killed(gearmand: Gearmand, tmp_path: Path,
                                                                 restart_redis: bool) -> None:
    """The leader's pool runs none of the retries: killing a master kills
    its children, and a run whose child dies is run again by gearmand, as
    any job is (docs/jobs.md). What must hold is that the leader's death
    mid-move neither loses a run nor submits one that then runs twice."""
    redis_server = RedisServer(tmp_path, persistent=True)
    redis_server.start()
    leader = job_pool(gearmand, redis_server.url, tmp_path, 'echo = { call = "jobtasks:echo", retries = 1 }',
                      name="alpha", host="host-a")
    worker = job_pool(gearmand, redis_server.url, tmp_path, ONCE, name="beta", host="host-b")
    (tmp_path / "jobtasks.py").write_text(JOB_TASKS + ONCE_TASK)
    try:
        with running(leader):
            wait_for(lambda: leader_pool(redis_server, [leader]), what="alpha to lead")
            with running(worker):
                for n in range(100):
                    submit_background(gearmand, "once", f"job {n}".encode(), f"once-{n}")
                wait_for(lambda: due_count(redis_server) == 100, what="100 retries scheduled")
                if restart_redis:
                    redis_server.stop()
                    redis_server.start()
                    assert due_count(redis_server) == 100  # the retries survived the restart
                wait_for(lambda: due_count(redis_server) < 100, what="the leader to move the first due runs")
                leader.proc.kill()  # type: ignore[union-attr]  (mid-move: some runs moved, most still due)
                killed_at = time.monotonic()
                wait_for(lambda: leader_pool(redis_server, [worker]), what="the other pool to lead")
                took_over = time.monotonic() - killed_at
                wait_for(lambda: len(runs_of(tmp_path, "once")) >= 200 and due_count(redis_server) == 0,
                         timeout=60, what="every retry to run")
                wait_for(lambda: not gearmand.status().get("once", (0, 0, 0))[1], what="no job of once running")
    finally:
        redis_server.stop()
    per_payload: dict[str, int] = {}
    for run in runs_of(tmp_path, "once"):
        per_payload[run["data"]] = per_payload.get(run["data"], 0) + 1
    assert len(per_payload) == 100 and set(per_payload.values()) == {2}, per_payload
    assert took_over <= 5.0


def test_a_foreground_client_hears_of_the_retry_and_permanent_failures_die_at_once(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    tasks = ('flaky = { call = "jobtasks:flaky", retries = 3, retry_delay = 30 }\n'
             'hopeless = { call = "jobtasks:hopeless", retries = 5, retry_delay = 1 }')
    with running(job_pool(gearmand, redis_server.url, tmp_path, tasks)):
        request = submit(gearmand, "flaky", b"fg")
        assert request.state == "FAILED"
        (warning,) = [w.decode() for w in request.warning_updates]
        assert warning.startswith("RuntimeError: failure number 1; retry 1 of 3 in ")
        delay = float(warning.split(" in ")[1].split(" s ")[0])
        assert 27 <= delay <= 33
        assert submit(gearmand, "hopeless", b"bad").state == "FAILED"
        (letter,) = wait_for(lambda: json.loads(gm_ctl(redis_server, "dead", "list", "--json")), what="a letter")
        assert letter["task"] == "hopeless" and letter["attempts"] == 1
        assert "Permanent: bad input" in letter["last_error"]
    assert len(runs_of(tmp_path, "hopeless")) == 1


PROGRESS_TASK = """

def progress(worker, job):
    worker.send_job_status(job, 1, 2)
    while not (RUNS / "go").exists():
        time.sleep(0.01)
    worker.send_job_status(job, 2, 2)
    return b"finished"

def failing(worker, job):
    raise KeyError("nope")
"""


def test_a_job_record_shows_it_running_with_progress_then_done_or_failed(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    tasks = ('progress = { call = "jobtasks:progress", keep_results = 60 }\n'
             'failing = { call = "jobtasks:failing", keep_results = 60 }')
    pool = job_pool(gearmand, redis_server.url, tmp_path, tasks)
    (tmp_path / "jobtasks.py").write_text(JOB_TASKS + PROGRESS_TASK)
    with running(pool):
        submit_background(gearmand, "progress", b"", "p-1")
        running_now = wait_for(lambda: (r := record(redis_server, "p-1")) and r.get("progress") == [1, 2] and r,
                               what="the record to show the job running at 1/2")
        assert running_now["state"] == "running" and "ended" not in running_now
        (tmp_path / "runs" / "go").touch()
        done = wait_for(lambda: (r := record(redis_server, "p-1")) and r["state"] == "done" and r, what="done")
        assert done["progress"] == [2, 2] and done["result"] == b"finished" and done["host"] == "host-a"
        assert 0 < done["ended"] - done["started"] < 10
        submit_background(gearmand, "failing", b"", "f-1")
        failed = wait_for(lambda: (r := record(redis_server, "f-1")) and r["state"] == "failed" and r, what="failed")
        assert failed["error"] == "KeyError: 'nope'" and "result" not in failed
        shown = gm_ctl(redis_server, "job", "p-1")
        assert "state     done" in shown and "result    8 bytes: finished" in shown
        ttl = redis_server.client().ttl("gearman-workers:jobs:result:p-1")
        assert 0 < ttl <= 60


def test_with_redis_down_jobs_run_and_a_retry_waits_on_disk_until_redis_is_back(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    tasks = ('flaky = { call = "jobtasks:flaky", retries = 3, retry_delay = 1, keep_results = 60 }\n'
             'echo = { call = "jobtasks:echo", keep_results = 60 }')
    pool = job_pool(gearmand, redis_server.url, tmp_path, tasks, "--spool-dir", str(tmp_path / "disk"))
    with running(pool):
        redis_server.stop()
        assert submit(gearmand, "echo", b"still served").result == b"still served"
        submit_background(gearmand, "flaky", b"abc", "while-down")
        spool = tmp_path / "disk" / "jobs.spool"  # spool_dir: on a disk that outlives a reboot
        wait_for(lambda: list(spool.glob("*.json")), what="the failure in the spool")
        assert submit(gearmand, "echo", b"still served").result == b"still served"
        wait_for(lambda: "job records are dropped" in pool.log(), what="the child to give up its record")
        redis_server.start()  # an empty Redis: what is kept is what the spool moves
        wait_for(lambda: not list(spool.glob("*.json")), what="the spool moved into Redis")
        done = wait_for(lambda: (r := record(redis_server, "while-down")) and r["state"] == "done" and r,
                        timeout=30, what="the job, retried, to end done")
        assert done["result"] == b"cba"
    assert len(runs_of(tmp_path, "flaky")) == 4
    dropped = [line for line in pool.log().splitlines() if "job records are dropped" in line]
    assert 1 <= len(dropped) <= 2  # once per outage, in each child that tried to write


def test_a_leader_that_dies_between_claim_and_settle_loses_no_run_and_runs_none_twice(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    """The two crash points of a move (jobs/store.py): claimed and never
    submitted; submitted and never settled. A stand-in leader does the
    first half of each and dies; the pool's keeper finishes them."""
    from gearman_workers.config import Server
    from gearman_workers.jobs.keys import JobKeys
    from gearman_workers.jobs.results import RETRYING
    from gearman_workers.jobs.spool import Failure
    from gearman_workers.jobs.store import JobStore
    from gearman_workers.jobs.submit import Submitter

    store = JobStore(redis_server.client(), JobKeys("gearman-workers"))
    assert store.hold_lease("stand-in", 2000)
    for chain, payload in (("a" * 16, b"claimed only"), ("b" * 16, b"claimed and submitted")):
        store.record_failure(Failure(chain, 1, "echo", chain.encode(), payload, 1, RETRYING, 0.0, "E", "trace",
                                     "host-x", "gone", 0.0, 0.0))
    found = store.claim_due("stand-in", 10)
    assert found is not None and {c[0] for c in found[0]} == {"a" * 16, "b" * 16}
    assert 9 <= found[1] <= 10  # nothing due now; the claims lapse in store.MOVING_MS
    pool = job_pool(gearmand, redis_server.url, tmp_path, 'echo = { call = "jobtasks:echo", retries = 1 }')
    with running(pool):
        submitter = Submitter([Server("127.0.0.1", gearmand.port)], 5.0)
        submitter.submit("echo", b"gw:" + b"b" * 16 + b":2", b"claimed and submitted")
        submitter.close()
        wait_for(lambda: len(runs_of(tmp_path, "echo")) == 1, what="the submitted run to run")
        # The stand-in dies here: its lease lapses, the pool's keeper leads and
        # takes both chains back once their claims lapse (store.MOVING_MS).
        wait_for(lambda: all(store.letter(c) and store.letter(c)["state"] == "done" for c in ("a" * 16, "b" * 16)),
                 timeout=30, what="both chains to end done")
        wait_for(lambda: "ended before; not run again" in pool.log(), what="the second submission to do nothing")
    ran = sorted(bytes.fromhex(run["data"]) for run in runs_of(tmp_path, "echo"))
    assert ran == [b"claimed and submitted", b"claimed only"]


def test_a_pool_with_the_roles_acl_user_keeps_its_jobs_and_writes_nothing_else(
        gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path) -> None:
    """The redis role's rules for a pool user (plugins/filter/acl.py) let it
    do all of the above, and no more than its keys."""
    from helpers import load_script

    rules = load_script("plugins/filter/acl.py").pool_acl_rules("host-a", "gearman-workers", "gearman-workers")
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "pool-host-a", "on", ">pool-password", *rules.split())
    url = f"redis://pool-host-a:pool-password@127.0.0.1:{redis_server.port}/0"
    tasks = 'broken = { call = "jobtasks:broken", retries = 1, retry_delay = 1, keep_results = 60 }'
    with running(job_pool(gearmand, url, tmp_path, tasks)) as pool:
        submit_background(gearmand, "broken", b"x", "acl-1")
        wait_for(lambda: admin.zcard("gearman-workers:jobs:dead") == 1, timeout=20, what="a dead letter")
        assert json.loads(admin.get("gearman-workers:jobs:result:acl-1"))["state"] == "dead"
        assert "NOPERM" not in pool.log() and "may not" not in pool.log()
    import redis

    user = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.set("gearman-workers:pool:host-a:forever", "1")  # its own keys: only with an expiry
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.eval("return redis.call('SET', KEYS[1], '1')", 1, "gearman-workers:data:all")
