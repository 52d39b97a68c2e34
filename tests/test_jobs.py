"""Jobs beyond one attempt, against a real gearmand and redis-server:
retries on their back-off curve, dead letters, result records, and the
fleet leader that moves due runs to gearmand exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import EXAMPLES, Gearmand, Pool, RedisServer, run_cli, running, wait_for

JOB_TASKS = '''
import os, time
from pathlib import Path
from gearman_workers import Permanent

RUNS = Path(os.environ["GW_TEST_RUNS"])

def _note(job, what):
    with open(RUNS / job.task, "a") as f:
        f.write(json.dumps({"t": time.time(), "unique": job.unique, "data": job.data.hex(), "what": what}) + "\\n")

import json

def flaky(worker, job):
    """Fails its first 3 runs of a payload, then returns it reversed."""
    runs = sum(1 for line in open(RUNS / job.task) if json.loads(line)["data"] == job.data.hex()) \\
        if (RUNS / job.task).exists() else 0
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


def job_pool(gearmand: Gearmand, redis_server: RedisServer, tmp_path: Path, tasks: str, *extra: str,
             name: str = "jobs", host: str = "host-a", processes: int = 2) -> Pool:
    (tmp_path / "jobtasks.py").write_text(JOB_TASKS)
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[pool]\npython_path = ["{tmp_path}", "{EXAMPLES}"]\n'
                      f'[control]\nredis_url = "{redis_server.url}"\nallow_unsigned = true\n'
                      f"[tasks]\n{tasks}\n")
    return Pool(gearmand, tmp_path, "--hostname", host, *extra, name=name, processes=processes, config=config,
                env={**os.environ, "GW_TEST_RUNS": str(runs)})


def runs_of(tmp_path: Path, task: str) -> list[dict]:
    path = tmp_path / "runs" / task
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
    with running(job_pool(gearmand, redis_server, tmp_path, tasks)):
        submit_background(gearmand, "flaky", b"\x00payload\xff", "order-17")
        done = wait_for(lambda: (r := record(redis_server, "order-17")) and r["state"] == "done" and r,
                        timeout=30, what="the job's record to say done")
    runs = runs_of(tmp_path, "flaky")
    assert len(runs) == 4
    assert done["result"] == b"\xffdaolyap\x00" and done["attempt"] == 4
    gaps = [later["t"] - earlier["t"] for earlier, later in zip(runs, runs[1:])]
    for gap, planned in zip(gaps, (1, 2, 4)):
        assert planned * 0.9 <= gap <= planned * 1.1 + 1.0, gaps
    assert [run["unique"] for run in runs][0] == "order-17"
    assert all(run["unique"].startswith("gw:") for run in runs[1:])


def test_a_job_that_always_fails_becomes_one_dead_letter(gearmand: Gearmand, redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    tasks = 'broken = { call = "jobtasks:broken", retries = 2, retry_delay = 1 }'
    payload = bytes(range(256))
    with running(job_pool(gearmand, redis_server, tmp_path, tasks)):
        submit_background(gearmand, "broken", payload, "broken-1")
        listed = wait_for(lambda: json.loads(gm_ctl(redis_server, "dead", "list", "--json")) or None,
                          timeout=30, what="a dead letter")
        last_run = runs_of(tmp_path, "broken")[-1]["t"]
        assert len(runs_of(tmp_path, "broken")) == 3
        (letter,) = listed
        assert letter["died"] - last_run <= 1.0
        shown = json.loads(gm_ctl(redis_server, "dead", "show", letter["id"], "--json"))
        assert bytes.fromhex(shown["payload_hex"]) == payload and shown["unique"] == "broken-1"
        assert shown["attempts"] == 3 and len(shown["runs"]) == 3
        assert all("ValueError: always broken" in run["error"] for run in shown["runs"])
        assert "Traceback" in shown["last_trace"] and "raise ValueError" in shown["last_trace"]
        assert shown["runs"][0]["host"] == "host-a" and shown["runs"][0]["pool"] == "jobs"

        gm_ctl(redis_server, "dead", "retry", letter["id"])
        wait_for(lambda: len(runs_of(tmp_path, "broken")) == 4, what="the retried dead letter to run")
        wait_for(lambda: len(runs_of(tmp_path, "broken")) == 6 and json.loads(
            gm_ctl(redis_server, "dead", "list", "--json")), timeout=30, what="it to die again")
        (again,) = json.loads(gm_ctl(redis_server, "dead", "list", "--json"))
        gm_ctl(redis_server, "dead", "purge", again["id"])
        assert json.loads(gm_ctl(redis_server, "dead", "list", "--json")) == []
