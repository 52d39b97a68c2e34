"""[hooks] against a real gearmand: every call recorded by a pool whose
hooks write one line each, checked against the jobs, recycles and stops
that happened; and hooks that raise change nothing."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from helpers import EXAMPLES, Gearmand, Pool, submit, wait_for

RECORDING_HOOKS = '''
import json, os

LOG = os.environ["GW_TEST_HOOKS"]

def _note(hook, **fields):
    line = json.dumps({"hook": hook, "pid": os.getpid(), **fields}) + "\\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())  # one write, appended whole
    finally:
        os.close(fd)

def post_fork(worker):
    _note("post_fork")

def before_job(worker, job):
    _note("before_job", job=job.handle, task=job.task)

def after_job(worker, job, outcome):
    _note("after_job", job=job.handle, task=job.task, outcome=outcome)

def on_failure(worker, job, exc):
    _note("on_failure", job=job.handle, error=type(exc).__name__)

def child_exit(worker, reason):
    _note("child_exit", reason=reason)

def master_ready(pool):
    _note("master_ready", pool=pool.name)

def master_exit(pool):
    _note("master_exit", pool=pool.name)

def raising(*args):
    raise RuntimeError("a hook that fails")

def exiting(*args):
    raise SystemExit(3)

def stuck(*args):
    import time
    _note("stuck")
    time.sleep(3600)
'''
HOOKS = ("post_fork", "before_job", "after_job", "on_failure", "child_exit", "master_ready", "master_exit")


def hooked_pool(gearmand: Gearmand, tmp_path: Path, hooks: dict[str, str], *extra: str) -> Pool:
    (tmp_path / "recording.py").write_text(RECORDING_HOOKS)
    config = tmp_path / "hooked.toml"
    table = "".join(f'{name} = "{spec}"\n' for name, spec in hooks.items())
    config.write_text(f'[pool]\npython_path = ["{tmp_path}", "{EXAMPLES}"]\nmax_jobs = 3\n'
                      f'[tasks]\necho = "tasks:echo"\nfail = "tasks:fail"\n[hooks]\n{table}')
    return Pool(gearmand, tmp_path, *extra, name="hooked", processes=2, config=config,
                env={"PATH": "/usr/bin:/bin", "GW_TEST_HOOKS": str(tmp_path / "hooks.log")})


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "hooks.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_hook_is_called_once_per_child_job_recycle_and_stop(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = hooked_pool(gearmand, tmp_path, {name: f"recording:{name}" for name in HOOKS})
    pool.start()
    try:
        wait_for(lambda: any(c["hook"] == "master_ready" for c in calls(tmp_path)), what="master_ready")
        outcomes = {}
        for number in range(10):
            task = "fail" if number % 4 == 0 else "echo"
            request = submit(gearmand, task, f"job {number}")
            outcomes[request.job.handle.decode()] = {"COMPLETE": "done", "FAILED": "failed"}[request.state]
        wait_for(lambda: sum(c["hook"] == "after_job" for c in calls(tmp_path)) == 10, what="every after_job")
    finally:
        pool.stop()
    seen = calls(tmp_path)
    master = pool.proc.pid  # type: ignore[union-attr]
    by_pid: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for call in seen:
        by_pid[call["pid"]].append(call)
    children = {pid: rows for pid, rows in by_pid.items() if pid != master}
    assert [c["hook"] for c in by_pid[master]] == ["master_ready", "master_exit"]
    assert seen[-1]["hook"] == "master_exit"  # after every child left
    for rows in children.values():  # each child: born, its jobs, one exit, in that order
        assert rows[0]["hook"] == "post_fork" and rows[-1]["hook"] == "child_exit"
        assert [r["hook"] for r in rows].count("post_fork") == 1 == [r["hook"] for r in rows].count("child_exit")
    after = {c["job"]: c["outcome"] for c in seen if c["hook"] == "after_job"}
    assert after == outcomes  # one after_job per job, with its outcome
    assert sorted(c["job"] for c in seen if c["hook"] == "before_job") == sorted(outcomes)
    failed = sorted(job for job, outcome in outcomes.items() if outcome == "failed")
    assert sorted(c["job"] for c in seen if c["hook"] == "on_failure") == failed
    # max_jobs = 3: a child that ran 3 jobs asked to be recycled; the others were stopped by the pool's stop
    reasons = {pid: rows[-1]["reason"] for pid, rows in children.items()}
    ran = {pid: sum(r["hook"] == "after_job" for r in rows) for pid, rows in children.items()}
    assert reasons == {pid: "recycled" if ran[pid] >= 3 else "stopped" for pid in children}
    assert collections.Counter(reasons.values())["recycled"] >= 3  # 10 jobs, 3 a child
    assert collections.Counter(reasons.values())["stopped"] >= 1


def test_hooks_that_raise_change_no_outcome_and_end_no_child(gearmand: Gearmand, tmp_path: Path) -> None:
    hooks = {name: "recording:raising" for name in HOOKS} | {"after_job": "recording:exiting"}
    pool = hooked_pool(gearmand, tmp_path, hooks, "--max-jobs", "0")
    pool.start()
    try:
        before = pool.children()
        results = [submit(gearmand, "echo", f"job {n}").result for n in range(10)]
        assert results == [f"job {n}".encode() for n in range(10)]
        failing = submit(gearmand, "fail", "on purpose")
        assert failing.state == "FAILED"
        assert pool.children() == before  # no child ended by a hook
        log = pool.log()
        assert "hook before_job raised; ignored" in log and "hook after_job raised; ignored" in log
        assert "RuntimeError: a hook that fails" in log and "SystemExit: 3" in log
    finally:
        pool.stop()


def test_a_stuck_exit_hook_is_left_behind_after_exit_timeout(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = hooked_pool(gearmand, tmp_path, {"child_exit": "recording:stuck", "master_exit": "recording:stuck"},
                       "--hook-exit-timeout", "0.5")
    pool.start()
    pool.stop()  # graceful_timeout is 10 s: the children leave on their own after half a second
    assert [c["hook"] for c in calls(tmp_path)] == ["stuck"] * 3  # two children, then the master
    assert pool.proc.returncode == 0  # type: ignore[union-attr]
    assert pool.log().count("hook child_exit did not return within exit_timeout 0.5 s") == 2
    assert "hook master_exit did not return within exit_timeout 0.5 s" in pool.log()
    assert "killing" not in pool.log()  # nobody had to be killed
