"""What task code can do to the pool, against a real gearmand: time limits,
poison jobs, hung children, recycling without a gap, grandchildren, crash
back-off, start-up errors. The tasks are in faulty_tasks.py."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from faulty_tasks import TASKS
from helpers import EXAMPLES, Gearmand, Pool, pid_alive, run_cli, running, submit, wait_for

TESTS = Path(__file__).resolve().parent
# A child is hung after 1.5 s of silence; an idle one beats every second.
QUICK_HEARTBEAT = ("--heartbeat-timeout", "1.5", "--poll-timeout", "1", "--connect-timeout", "1")


def faulty_pool(gearmand: Gearmand, tmp_path: Path, *extra: str, processes: int = 2, **kwargs: Any) -> Pool:
    tasks = [arg for name in TASKS for arg in ("--task", f"{name}=faulty_tasks:{name}")]
    return Pool(gearmand, tmp_path, "--python-path", str(TESTS), "--python-path", str(EXAMPLES), *tasks,
                *extra, processes=processes, **kwargs)


def in_background(gearmand: Gearmand, task: str, data: str, timeout: float = 30) -> tuple[threading.Thread, dict]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=submit(gearmand, task, data, timeout)))
    thread.start()
    return thread, result


def deaths(pool: Pool, task: str) -> int:
    """Children the master saw die (or killed) while running TASK."""
    return pool.log().count(f"while running task {task} job")


def warnings_of(request: Any) -> str:
    return b" ".join(request.warning_updates).decode()


class RegisteredSampler:
    """Samples gearmand's registered workers of a pool every few ms, as an
    operator watching gearadmin would, and keeps the lowest count."""

    def __init__(self, gearmand: Gearmand, pool: str) -> None:
        self.gearmand, self.pool = gearmand, pool
        self.lowest: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = len(self.gearmand.workers(self.pool))
            self.lowest = count if self.lowest is None else min(self.lowest, count)
            self.samples += 1

    def __enter__(self) -> RegisteredSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- time limits -------------------------------------------------------------


def test_soft_time_limit_fails_the_job_and_the_child_goes_on(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--job-timeout", "1", processes=1)) as pool:
        (child,) = pool.children()
        for task in ("sleep", "spin", "shrugs"):  # shrugs catches JobTimeout and returns: failed all the same
            request = submit(gearmand, task, "30")
            assert request.state == "FAILED"
            assert f"JobTimeout: task {task} exceeded its time limit of 1 s" in warnings_of(request)
        assert pool.children() == {child}
        assert submit(gearmand, "sleep", "0.1").result == str(child).encode()


def test_a_task_table_sets_its_own_time_limit(gearmand: Gearmand, tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(f'[pool]\npython_path = ["{TESTS}"]\njob_timeout = 60\n'
                      '[tasks]\nsleep = { call = "faulty_tasks:sleep", timeout = 0.5 }\n'
                      'unlimited = { call = "faulty_tasks:shrugs", timeout = 0 }\n')
    with running(Pool(gearmand, tmp_path, config=config, processes=1)):
        request = submit(gearmand, "sleep", "30")
        assert "exceeded its time limit of 0.5 s" in warnings_of(request)
        # the next job, of a task without a limit, does not inherit the timeout
        assert submit(gearmand, "unlimited", "0.6").result == b"finished anyway"


# (C code holding the GIL is not among them: CPython's regex engine, the usual
# culprit, checks for signals while it backtracks, so the soft limit ends it.)
@pytest.mark.parametrize("task", ["stubborn_ledger", "blocked_ledger"])
def test_a_job_killed_for_its_time_limit_is_answered_and_never_run_again(
        gearmand: Gearmand, tmp_path: Path, task: str) -> None:
    ledger = tmp_path / "runs"
    pool = faulty_pool(gearmand, tmp_path, "--job-timeout", "0.5", "--kill-grace", "0.5", "--poison-kills", "5",
                       env={**os.environ, "GEARMAN_WORKERS_LEDGER": str(ledger)})
    with running(pool):
        request = submit(gearmand, task, "once", timeout=0.5 + 0.5 + 1)  # limit + grace + 1 s
        assert request.state == "FAILED"
        assert (f"JobTimeout: task {task} exceeded its time limit of 0.5 s and its child was killed after "
                f"kill_grace 0.5 s; job {request.job.handle.decode()} is not run again") in warnings_of(request)
        pool.wait_registered(2)
        assert ledger.read_bytes() == b"once\n"  # its side effect happened exactly once
        assert pool.log().count("past its time limit of 0.5 s and did not give up within kill_grace 0.5 s") == 1
        assert submit(gearmand, "pid", "").state == "COMPLETE"


@pytest.mark.parametrize("how", ["raising-handler", "quiet-handler", "alarm", "setitimer", "blocked"])
def test_task_code_that_takes_sigalrm_does_not_take_the_next_jobs_time_limit(
        gearmand: Gearmand, tmp_path: Path, how: str) -> None:
    # kill_grace 30: only the soft limit can answer the sleep within the client's 10 s.
    with running(faulty_pool(gearmand, tmp_path, "--job-timeout", "1", "--kill-grace", "30", processes=1)) as pool:
        (child,) = pool.children()
        assert submit(gearmand, "own_alarm", how).result == how.encode()
        request = submit(gearmand, "sleep", "20", timeout=10)
        assert "JobTimeout: task sleep exceeded its time limit of 1 s" in warnings_of(request)
        assert submit(gearmand, "pid", "").result == str(child).encode()  # the same child, still serving


# --- poison jobs -------------------------------------------------------------------


@pytest.mark.parametrize(("task", "last_death"), [("segfault", "killed by SIGSEGV"),
                                                 ("close_fds", "exited with status 1")])
def test_a_job_whose_runs_kill_children_is_failed_after_poison_kills_and_the_pool_keeps_serving(
        gearmand: Gearmand, tmp_path: Path, task: str, last_death: str) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--poison-kills", "2", processes=2)) as pool:
        request = submit(gearmand, task, "x", timeout=2)  # the client is answered within 2 s
        assert request.state == "FAILED"
        text = warnings_of(request)
        assert "PoisonJob: job" in text and "killed 2 children" in text and last_death in text
        wait_for(lambda: deaths(pool, task) == 2, what="the master to log both deaths")
        pool.wait_registered(2)
        assert deaths(pool, task) == 2  # not one child more
        assert submit(gearmand, "pid", "").state == "COMPLETE"
        log = pool.log()
        assert "before it ever registered" not in log
        assert "Traceback" not in log  # a child whose descriptors were closed says so in one line


def test_one_poison_kill_is_not_enough_and_the_job_runs_again(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--poison-kills", "3", processes=2)) as pool:
        assert "killed 3 children" in warnings_of(submit(gearmand, "segfault", "x", timeout=30))
        wait_for(lambda: deaths(pool, "segfault") == 3, what="three deaths logged")
        pool.wait_registered(2)
        assert deaths(pool, "segfault") == 3


def test_a_task_that_kills_every_child_it_runs_in_makes_its_slot_back_off(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--poison-kills", "1", processes=1)) as pool:
        for _ in range(4):  # each job a new one: poison handling does not stop them
            assert "PoisonJob" in warnings_of(submit(gearmand, "close_fds", "x", timeout=30))
            pool.wait_registered(1)
        log = pool.log()
        assert "once registered (crash 4 in a row in slot 0); replacing it in 1.00 s" in log


# --- hung children ----------------------------------------------------------------


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_stopped_child_is_killed_and_replaced(gearmand: Gearmand, tmp_path: Path, busy: bool) -> None:
    pool = faulty_pool(gearmand, tmp_path, *QUICK_HEARTBEAT, processes=2)
    with running(pool):
        thread = None
        if busy:
            thread, result = in_background(gearmand, "sleep", "1")
            victim = wait_for(lambda: _busy_child(pool, gearmand), what="a busy child")
        else:
            victim = min(pool.children())
        os.kill(victim, signal.SIGSTOP)
        wait_for(lambda: not pid_alive(victim), what="the stopped child to be killed")
        pool.wait_registered(2, exclude={victim})
        assert f"child {victim} is hung: no heartbeat for" in pool.log()
        assert ("busy with task sleep" if busy else "(idle)") in pool.log()
        if thread is not None:
            thread.join(30)
            assert result["r"].state == "COMPLETE"  # gearmand handed it to another child


def _busy_child(pool: Pool, gearmand: Gearmand) -> int | None:
    if gearmand.status().get("sleep", (0, 0, 0))[1] != 1:
        return None
    busy = [pid for pid in pool.children() if _asleep(pid)]
    return busy[0] if len(busy) == 1 else None


def _asleep(pid: int) -> bool:
    """The child's main thread waits in clock_nanosleep: the sleep task runs there."""
    try:
        return "hrtimer_nanosleep" in Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        return False


def test_a_long_job_within_its_time_limit_is_not_taken_for_a_hung_child(gearmand: Gearmand, tmp_path: Path) -> None:
    # Every task has a time limit: no heartbeat thread; the deadline watches busy children.
    with running(faulty_pool(gearmand, tmp_path, *QUICK_HEARTBEAT, "--job-timeout", "10", processes=1)) as pool:
        (child,) = pool.children()
        request = submit(gearmand, "sleep", "3", timeout=20)  # twice the heartbeat timeout
        assert request.state == "COMPLETE" and request.result == str(child).encode()
        assert "is hung" not in pool.log()
        threads = len(list(Path(f"/proc/{child}/task").iterdir()))
        assert threads == 1  # the child stayed single-threaded


def test_a_child_stuck_holding_the_gil_is_killed_as_hung(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = faulty_pool(gearmand, tmp_path, *QUICK_HEARTBEAT, "--poison-kills", "1", processes=2)
    with running(pool):
        request = submit(gearmand, "gil_hog", "x", timeout=30)
        assert "PoisonJob" in warnings_of(request) and "no heartbeat" in warnings_of(request)
        assert "busy with task gil_hog" in pool.log()
        pool.wait_registered(2)


# --- recycling -------------------------------------------------------------------------


def test_max_jobs_recycles_without_a_gap(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--max-jobs", "10", processes=2)) as pool, \
            RegisteredSampler(gearmand, pool.name) as sampler:
        client = gearmand.client()
        answered: dict[int, int] = {}
        for _ in range(12):
            jobs = client.submit_multiple_jobs([{"task": "pid", "data": ""} for _ in range(10)], poll_timeout=30)
            for request in jobs:
                assert request.state == "COMPLETE"
                answered[int(request.result)] = answered.get(int(request.result), 0) + 1
    assert sampler.samples > 20 and sampler.lowest == 2
    assert len(answered) >= 6  # 120 jobs, about 10 per child
    assert max(answered.values()) <= 11  # max_jobs plus its jitter (10 %), never more
    assert "jobs done, max_jobs 10" in pool.log()


def test_max_memory_recycles_a_leaking_child(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--max-memory", "80", processes=1)) as pool, \
            RegisteredSampler(gearmand, pool.name) as sampler:
        seen = [submit(gearmand, "leak", "").result.split() for _ in range(20)]
    rss = [int(mib) for _, mib in seen]
    assert max(rss) < 80 + 10 + 10  # checked after each job: at most one leak past the limit
    assert len({pid for pid, _ in seen}) >= 3
    assert sampler.lowest == 1
    assert "resident memory above max_memory 80 MiB" in pool.log()


def test_max_age_recycles_without_a_gap(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--max-age", "0.5", processes=2)) as pool, \
            RegisteredSampler(gearmand, pool.name) as sampler:
        first = pool.children()
        wait_for(lambda: len(pool.log().split("max_age 0.5 s")) > 6, what="several recyclings")
        assert not pool.children() & first
    assert sampler.lowest == 2


# --- crashes, kills and strays -------------------------------------------------------------


def test_kill_storm_every_registered_child_is_replaced_without_backoff(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, processes=3)) as pool:
        killed: set[int] = set()
        for _ in range(15):
            victim = max(pool.wait_registered(3, exclude=killed))
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        pool.wait_registered(3, exclude=killed)
        log = pool.log()
        assert log.count("killed by SIGKILL after") == 15
        assert "before it ever registered" not in log


def test_whatever_a_task_forked_dies_with_its_child(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, processes=1)) as pool:
        (child,) = pool.children()
        grandchild = int(submit(gearmand, "grandchild", "").result)
        daemon = int(submit(gearmand, "daemon", "").result)
        assert pid_alive(grandchild) and pid_alive(daemon)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: not pid_alive(grandchild) and not pid_alive(daemon), what="the task's processes to die")
        (successor,) = pool.wait_registered(1, exclude={child})
        assert {pid for pid in gearmand.worker_pids()} == {successor}  # no ghost holding the old socket
        grandchild = int(submit(gearmand, "grandchild", "").result)
        daemon = int(submit(gearmand, "daemon", "").result)
        pool.signal(signal.SIGTERM)
        assert pool.wait_exit() == 0
    assert not pid_alive(grandchild) and not pid_alive(daemon)
    wait_for(lambda: not gearmand.worker_pids(), what="gearmand to list no worker of the pool")


def test_no_ghost_worker_after_a_master_kill_and_its_strays_are_stopped_at_the_next_start(
        gearmand: Gearmand, tmp_path: Path) -> None:
    pool = faulty_pool(gearmand, tmp_path, processes=1)
    with running(pool):
        grandchild = int(submit(gearmand, "grandchild", "").result)
        daemon = int(submit(gearmand, "daemon", "").result)
        pool.signal(signal.SIGKILL)
        pool.wait_exit()
        # The task's processes outlive it, but hold none of the pool's gearmand connections.
        wait_for(lambda: not gearmand.worker_pids(pool.name), timeout=1, what="no connection of the pool left")
        assert pid_alive(grandchild) and pid_alive(daemon)
    with running(pool):
        assert not pid_alive(grandchild) and not pid_alive(daemon)
        assert pool.log().count("stopping leftover process") >= 2
    assert not list(pool.state_dir.glob("*.forks.*"))  # a clean stop leaves no record behind


def test_a_task_that_forks_and_exits_in_the_fork_is_answered_by_its_child_only(
        gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, processes=1)) as pool:
        for status in ("0", "7"):
            request = submit(gearmand, "fork_and_exit", status)
            assert request.state == "COMPLETE" and request.result == status.encode()  # the fork's own status
        assert "failed on job" not in pool.log() and "Traceback" not in pool.log()
        assert submit(gearmand, "pid", "").state == "COMPLETE"


def test_a_long_job_is_logged_once(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, "--long-job-warning", "0.3", processes=1)) as pool:
        (child,) = pool.children()
        request = submit(gearmand, "sleep", "2.5")  # the master looks at least once a second
        handle = request.job.handle.decode()
        lines = [line for line in pool.log().splitlines() if "long_job_warning" in line]
        assert len(lines) == 1, lines
        assert f"child {child} has been busy with task sleep job {handle} for" in lines[0]


# --- gearmand comes back --------------------------------------------------------------------


def test_after_a_long_gearmand_outage_children_register_again_promptly(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(faulty_pool(gearmand, tmp_path, processes=2)) as pool:
        children = pool.children()
        gearmand.stop()
        wait_for(lambda: pool.log().count("unreachable") == 2, what="both children to notice")
        time.sleep(3)  # an outage longer than the back-off's ceiling: that is the case under test
        gearmand.start()
        back = time.monotonic()
        pool.wait_registered(2)
        print(f"registered again {time.monotonic() - back:.2f} s after gearmand came back")
        assert pool.children() == children


# --- start-up errors ------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "message"), [
    (["--state-dir", "{file}/state"], "[pool] state_dir: {file}/state cannot be a directory: {file} is a file"),
    (["--pidfile", "{file}/x.pid"], "[pool] pidfile: {file} cannot be a directory: {file} is a file"),
    (["--heartbeat-timeout", "2", "--poll-timeout", "5"],
     "[pool] heartbeat_timeout: must be longer than [gearman] poll_timeout (5 s), got 2"),
    (["--heartbeat-timeout", "2", "--poll-timeout", "1", "--connect-timeout", "3"],
     "[pool] heartbeat_timeout: must be longer than [gearman] connect_timeout (3 s), got 2"),
    (["--job-timeout", "-1"], "--job-timeout: expected seconds from 0 to 86400, got '-1'"),
    (["--poison-kills", "-1"], "--poison-kills: expected a number from 0 to 1000, got -1"),
    (["--state-dir", "/proc/nope"], "[pool] state_dir: cannot create /proc/nope: No such file or directory"),
    (["--max-memory", "1"], "[pool] max_memory: 1 MiB is below what an idle child holds already (about {rss} MiB): "
                            "every child would be replaced after every job; raise it, or 0 for no limit"),
])
def test_start_up_problems_are_one_line_and_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    regular = tmp_path / "regular-file"
    regular.write_text("")
    flags = [flag.replace("{file}", str(regular)) for flag in flags]
    state_dir = tmp_path / "state"
    result = run_cli("gearman-workers", "--config", str(EXAMPLES / "gearman-workers.toml"),
                     "--state-dir", str(state_dir), *flags)
    assert result.returncode == 2, result.stderr
    expected = f"gearman-workers: config error: {message.replace('{file}', str(regular))}"
    rss = re.search(r"about (\d+) MiB", result.stderr)  # the master's own size, measured at start
    assert result.stderr.splitlines() == [expected.replace("{rss}", rss.group(1) if rss else "")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regular-file"]  # nothing created
