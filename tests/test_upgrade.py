"""New code without a gap (handover.py), against a real gearmand: while a
client streams checked jobs and gearadmin is sampled every 50 ms, the pool
hands over to a master running the new code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gearman
import pytest

from gearman_workers import identities
from gearman_workers.pidfile import read_pid
from helpers import Gearmand, JobStream, Pool, free_port, needs_root, pid_alive, run_cli, submit, wait_for

TASKS = '''
import os
VERSION = {version!r}
LOADED = {{}}

def preload():
    LOADED["by"] = VERSION

def stamp(worker, job):
    return f"{{VERSION}} {{LOADED.get('by')}} {{os.getpid()}} " + job.data.decode()

def slow(worker, job):
    import time
    time.sleep(float(job.data))
    return f"{{VERSION}} slept"
'''


def write_tasks(directory: Path, version: str) -> None:
    (directory / "versioned.py").write_text(TASKS.format(version=version))
    for cached in (directory / "__pycache__").glob("versioned*"):
        cached.unlink()


@pytest.fixture
def versioned(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    write_tasks(code, "v1")
    config = tmp_path / "pool.toml"
    config.write_text(f'[pool]\npython_path = ["{code}"]\npreload = "versioned:preload"\nupgrade_timeout = 20\n'
                      '[tasks]\nstamp = "versioned:stamp"\nslow = "versioned:slow"\n')
    return config


class Stream(JobStream):
    """Checked `stamp` jobs, noting which code answered, and the pool's
    registered workers."""

    def __init__(self, gearmand: Gearmand, pool: str) -> None:
        super().__init__()
        self.gearmand, self.pool = gearmand, pool
        self.versions: list[str] = []
        self.registered: list[int] = []

    def client(self) -> gearman.GearmanClient:
        return self.gearmand.client()

    def job(self, client: gearman.GearmanClient, number: int) -> str | None:
        payload = f"job-{number}"
        request = client.submit_job("stamp", payload, poll_timeout=30)
        result = request.result.decode() if request.complete and request.result else ""
        if not result.endswith(" " + payload):
            return f"{payload}: {request.state} {result!r}"
        self.versions.append(result.split()[0] + "/" + result.split()[1])
        return None

    def sample(self) -> None:
        self.registered.append(len(self.gearmand.worker_pids(self.pool)))


@contextlib.contextmanager
def stopped_after(pidfile: Path) -> Iterator[None]:
    """Stop whichever master the PID file names at the end (the one we
    started may have handed over to another)."""
    try:
        yield
    finally:
        master = read_pid(pidfile)
        if master and pid_alive(master):
            os.kill(master, signal.SIGTERM)
            wait_for(lambda: not pid_alive(master), what=f"master {master} to stop")


def test_upgrade_keeps_n_registered_fails_no_job_and_the_new_code_answers(
        gearmand: Gearmand, tmp_path: Path, versioned: Path) -> None:
    pool = Pool(gearmand, tmp_path, config=versioned, processes=2)
    with stopped_after(pool.pidfile):
        pool.start()
        old_master, old_children = pool.proc.pid, pool.children()
        slow_result: dict[str, object] = {}
        slow_job = threading.Thread(target=lambda: slow_result.update(r=submit(gearmand, "slow", "2")))
        with Stream(gearmand, "test") as stream:
            slow_job.start()
            wait_for(lambda: gearmand.status()["slow"][1] == 1, what="the slow job to run")
            write_tasks(versioned.parent / "code", "v2")
            upgrade = run_cli("gearman-workers", "--config", str(versioned), "--name", "test",
                              "--state-dir", str(pool.state_dir), "--upgrade")
            assert upgrade.returncode == 0, upgrade.stderr + pool.log()
            new_master = read_pid(pool.pidfile)
            assert new_master not in (None, old_master)
            assert f"handed the pool over to master {new_master}" in upgrade.stdout
            wait_for(lambda: stream.versions[-1:] == ["v2/v2"], what="the new code to answer")
            assert pool.wait_exit() == 0  # the old master drained and left
            assert f"master {new_master} takes over from master {old_master}" in pool.log()
            assert "died during the handover" not in pool.log()  # it waited for its predecessor
            slow_job.join(20)
        assert stream.wrong == [] and stream.answered == stream.sent
        assert min(stream.registered) >= 2, stream.registered
        assert slow_result["r"].result == b"v1 slept"  # the job in flight finished on the old code
        assert not any(pid_alive(pid) for pid in old_children)
        new_children = gearmand.worker_pids("test")
        assert len(new_children) == 2 and not new_children & old_children
        answer = submit(gearmand, "stamp", "after").result.decode().split()
        assert answer[:2] == ["v2", "v2"] and int(answer[2]) in new_children
        print(f"upgrade under load: {stream.sent} jobs streamed, {len(stream.wrong)} lost/failed/wrong, "
              f"lowest registered {min(stream.registered)} of 2 ({len(stream.registered)} samples)")


def test_new_code_that_cannot_load_leaves_the_running_pool_alone(
        gearmand: Gearmand, tmp_path: Path, versioned: Path) -> None:
    pool = Pool(gearmand, tmp_path, config=versioned, processes=2)
    with stopped_after(pool.pidfile):
        pool.start()
        children = pool.children()
        (versioned.parent / "code" / "versioned.py").write_text("def stamp(:\n")
        upgrade = run_cli("gearman-workers", "--config", str(versioned), "--name", "test",
                          "--state-dir", str(pool.state_dir), "--upgrade")
        assert upgrade.returncode == 1
        assert "kept the pool: the new master failed: cannot load task" in upgrade.stderr
        assert "SyntaxError" in upgrade.stderr
        assert read_pid(pool.pidfile) == pool.proc.pid and pool.children() == children
        assert gearmand.worker_pids("test") == children
        assert submit(gearmand, "stamp", "still").result.decode().startswith("v1 v1 ")
        assert "upgrade failed, keeping this master and its code" in pool.log()


def test_upgrade_asks_a_running_master(tmp_path: Path, versioned: Path) -> None:
    done = run_cli("gearman-workers", "--config", str(versioned), "--state-dir", str(tmp_path / "none"),
                   "--upgrade")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"no running master holds {tmp_path / 'none' / 'default.pid'}")


def test_a_daemon_started_with_a_relative_config_upgrades(gearmand: Gearmand, tmp_path: Path, versioned: Path) -> None:
    """--daemon moves the master to /; the new master still starts where the
    first one was started, so a relative --config names the same file."""
    common = ["--config", versioned.name, "--servers", gearmand.address, "--name", "test", "--processes", "1",
              "--state-dir", "state"]
    started = run_cli("gearman-workers", *common, "--daemon", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    pidfile = tmp_path / "state" / "test.pid"
    with stopped_after(pidfile):
        wait_for(lambda: len(gearmand.worker_pids("test")) == 1, what="the daemon's child")
        old_master = read_pid(pidfile)
        write_tasks(versioned.parent / "code", "v2")
        upgrade = run_cli("gearman-workers", *common, "--upgrade", cwd=tmp_path)
        assert upgrade.returncode == 0, upgrade.stderr + (tmp_path / "state" / "test.log").read_text()
        assert read_pid(pidfile) not in (None, old_master)
        wait_for(lambda: submit(gearmand, "stamp", "x").result.startswith(b"v2 v2 "), what="the new code")


class Scraper:
    """Scrapes /metrics every 20 ms while a `with` block runs, noting which
    master answered (its process start time) and any failed scrape."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.masters: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    text = answer.read().decode()
                self.masters.append(float(re.search(r"^process_start_time_seconds (\S+)$", text, re.M).group(1)))
            except (OSError, AttributeError) as err:
                self.failures.append(repr(err))

    def __enter__(self) -> Scraper:
        self._thread.start()
        wait_for(lambda: len(self.masters) >= 3, what="the first scrapes")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_upgrade_needs_only_the_pid_file(gearmand: Gearmand, tmp_path: Path, versioned: Path) -> None:
    pool = Pool(gearmand, tmp_path, config=versioned, processes=2)
    with stopped_after(pool.pidfile):
        pool.start()
        old_master = pool.proc.pid  # type: ignore[union-attr]
        upgrade = run_cli("gearman-workers", "--pidfile", str(pool.pidfile), "--upgrade", cwd=tmp_path)
        assert upgrade.returncode == 0, upgrade.stderr + pool.log()
        assert read_pid(pool.pidfile) not in (None, old_master)
        assert pool.wait_exit() == 0


def test_metrics_are_served_throughout_an_upgrade(gearmand: Gearmand, tmp_path: Path, versioned: Path) -> None:
    port = free_port()
    pool = Pool(gearmand, tmp_path, "--metrics-listen", f"127.0.0.1:{port}", config=versioned, processes=2)
    with stopped_after(pool.pidfile):
        pool.start()
        with Scraper(port) as scraper:
            first = scraper.masters[-1]
            upgrade = run_cli("gearman-workers", "--config", str(versioned), "--name", "test",
                              "--state-dir", str(pool.state_dir), "--upgrade")
            assert upgrade.returncode == 0, upgrade.stderr + pool.log()
            assert pool.wait_exit() == 0
            seen = len(scraper.masters)
            wait_for(lambda: len(scraper.masters) > seen + 3, what="scrapes after the old master left")
    assert scraper.failures == []
    assert scraper.masters[-1] != first  # the new master answers, on the socket it inherited
    assert set(scraper.masters[seen:]) == {scraper.masters[-1]}


# --- --upgrade signals only a master it has proven ------------------------------------

HOLD_LOCK = ("import fcntl, sys, time; fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX); "
             "print('locked', flush=True); time.sleep(60)")


@contextlib.contextmanager
def lock_holder(lock: Path, user: int | None = None) -> Iterator[subprocess.Popen]:
    """A process (of USER) holding LOCK; opened here, since USER may not reach the test's directory."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    holder = subprocess.Popen(["/usr/bin/python3", "-c", HOLD_LOCK, str(fd)], stdout=subprocess.PIPE, user=user,
                              stdin=subprocess.DEVNULL, pass_fds=[fd])
    os.close(fd)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("attack", ["directory of another user", "recycled pid", "not the lock holder",
                                    "not gearman-workers"])
def test_upgrade_signals_nothing_it_has_not_proven_to_be_the_master(tmp_path: Path, versioned: Path,
                                                                    attack: str) -> None:
    nobody = 65534
    if attack == "directory of another user":
        needs_root("the directory and the lock must belong to another user")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    lock = state_dir / "default.pid.lock"
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(lock_holder(lock, nobody if attack == "directory of another user" else None))
        sleeper = subprocess.Popen(["sleep", "60"])  # a root process that holds nothing
        stack.callback(lambda: (sleeper.kill(), sleeper.wait()))
        # The PID file names the lock's holder (a process that is no master), or a process holding nothing.
        victim = sleeper if attack == "not the lock holder" else holder
        (state_dir / "default.pid").write_text(f"{victim.pid}\n")
        recorded = {"pid": victim.pid, "start_time": identities.ProcessIdentity.of(victim.pid).start_time}
        if attack == "recycled pid":  # the dead master's record; its PID now belongs to another process
            recorded["start_time"] -= 1
        (state_dir / "default.state.json").write_text(json.dumps(
            {"version": 1, "pool": "default", "boot_id": identities.boot_id(), "master": recorded, "children": []}))
        if attack == "directory of another user":
            for path in (state_dir, *state_dir.iterdir()):
                os.chown(path, nobody, nobody)
        done = run_cli("gearman-workers", "--config", str(versioned), "--state-dir", str(state_dir), "--upgrade")
        assert done.returncode == 1
        expected = {"directory of another user": f"refusing to signal anything: {state_dir} is owned by uid {nobody}",
                    "recycled pid": f"refusing to signal PID {victim.pid}: it is not the process the state file "
                                    "recorded (its start time differs)",
                    "not the lock holder": f"refusing to signal PID {victim.pid}: it does not hold {lock}",
                    "not gearman-workers": f"refusing to signal PID {victim.pid}: it does not run gearman-workers"}
        assert expected[attack] in done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert victim.poll() is None  # not signalled
