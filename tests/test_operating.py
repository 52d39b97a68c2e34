"""What an operator who runs gunicorn, Celery and supervisor expects of the
pool's signals, exit statuses and start-up errors (issue 27)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from helpers import Gearmand, Pool, children_of, pid_alive, run_cli, submit, wait_for


def _daemon(gearmand: Gearmand, tmp_path: Path, log_file: Path) -> tuple[Pool, int]:
    pool = Pool(gearmand, tmp_path, "--daemon", "--log-file", str(log_file), "--log-level", "info")
    result = run_cli("gearman-workers", *pool.argv[1:])
    assert result.returncode == 0, result.stderr
    pid = wait_for(lambda: pool.pidfile.exists() and int(pool.pidfile.read_text()), what="the PID file")
    wait_for(lambda: len(gearmand.workers("test")) == 2, what="the daemon's children")
    return pool, pid


def test_usr1_reopens_the_log_file_in_the_master_and_the_children_losing_no_job(
        gearmand: Gearmand, tmp_path: Path) -> None:
    log_file, rotated = tmp_path / "pool.log", tmp_path / "pool.log.1"
    _, pid = _daemon(gearmand, tmp_path, log_file)
    try:
        slow = {}
        job = threading.Thread(target=lambda: slow.setdefault("result", submit(gearmand, "slow", b"1").result))
        job.start()
        wait_for(lambda: "busy slow" in " ".join(Path(f"/proc/{c}/cmdline").read_text()
                                                for c in children_of(pid)), what="a child busy with slow")
        log_file.rename(rotated)  # what logrotate does, before its postrotate
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: log_file.exists() and "SIGUSR1: reopened" in log_file.read_text(), what="a new log file")
        job.join(10)
        assert slow["result"].startswith(b"slept 1s")  # the job in hand finished
        submit(gearmand, "fail", b"after rotation")  # a child logs the failure: in the new file
        wait_for(lambda: "asked to fail with b'after rotation'" in log_file.read_text(), what="the child's line")
        assert "after rotation" not in rotated.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), what="the daemon to exit")


def test_a_signal_without_a_meaning_is_logged_and_ignored(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = Pool(gearmand, tmp_path).start()
    try:
        before = pool.children()
        for sig in (signal.SIGALRM, signal.SIGPROF, signal.SIGPWR):
            pool.signal(sig)
        for child in before:
            os.kill(child, signal.SIGPWR)
        wait_for(lambda: pool.log().count("SIGPWR means nothing to gearman-workers; ignored") == 3,
                 what="the master's and the children's log lines")
        assert "SIGALRM means nothing" in pool.log() and "SIGPROF means nothing" in pool.log()
        assert submit(gearmand, "echo", b"still here").result == b"still here"
        assert pool.children() == before and pool.proc is not None and pool.proc.poll() is None
    finally:
        pool.stop()


# --- task code that does not load -------------------------------------------------


def _tasks(tmp_path: Path, source: str) -> list[str]:
    (tmp_path / "mytasks.py").write_text(source)
    return ["--python-path", str(tmp_path), "--state-dir", str(tmp_path / "state"), "--name", "t",
            "--servers", "127.0.0.1:1"]


def test_code_that_cannot_load_exits_3_with_the_summary_then_the_traceback(tmp_path: Path) -> None:
    flags = _tasks(tmp_path, "import os\nimport numpyy\n\ndef run(worker, job):\n    return b''\n")
    result = run_cli("gearman-workers", *flags, "--task", "x=mytasks:run")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "gearman-workers: cannot load task 'x': mytasks:run: ModuleNotFoundError: " \
                       "No module named 'numpyy'"
    assert all(line.startswith("gearman-workers: ") for line in lines)
    assert f'gearman-workers:   File "{tmp_path / "mytasks.py"}", line 2, in <module>' in lines


def test_code_that_raised_while_loading_exits_75_after_a_wait_that_grows(tmp_path: Path) -> None:
    flags = _tasks(tmp_path, "raise ConnectionRefusedError('database down')\n")
    (tmp_path / "state").mkdir()
    waits = []
    for _ in range(2):
        result = run_cli("gearman-workers", *flags, "--task", "x=mytasks:run")
        assert result.returncode == 75, result.stderr
        waits.append(result.stderr)
    assert "exiting 75 in 1 s for a restart" in waits[0] and "exiting 75 in 2 s for a restart" in waits[1]
    assert "ConnectionRefusedError: database down" in waits[1]
    assert (tmp_path / "state/t.start-failures").read_text() == "2"


def test_a_start_that_loads_forgets_the_failures(gearmand: Gearmand, tmp_path: Path) -> None:
    state = tmp_path / "state-test"
    state.mkdir()
    (state / "test.start-failures").write_text("5")
    pool = Pool(gearmand, tmp_path).start()
    try:
        assert not (state / "test.start-failures").exists()
    finally:
        pool.stop()


def test_a_preload_that_raises_exits_75_with_its_traceback_in_the_log(gearmand: Gearmand, tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text("def boot():\n    raise TimeoutError('cache not reachable')\n\n"
                                         "def run(worker, job):\n    return b''\n")
    config = tmp_path / "pool.toml"
    config.write_text(f'[pool]\npython_path = ["{tmp_path}"]\npreload = "mytasks:boot"\n[tasks]\nx = "mytasks:run"\n')
    pool = Pool(gearmand, tmp_path, config=config).start(wait=False)
    assert pool.wait_exit(timeout=20) == 75
    log = pool.log()
    assert "preload failed: mytasks:boot: TimeoutError: cache not reachable" in log
    assert 'mytasks.py", line 2, in boot' in log  # the traceback, in the log
    pool.stop()
