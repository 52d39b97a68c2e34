"""Command tasks against a real gearmand: any executable as a task, with
the stdin/stdout/exit-status contract, the status channel on fd 3, and
the time limit killing the whole process group."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from helpers import Gearmand, Pool, descendants, pid_alive, process_table, submit, wait_for

COMMANDS = '''
upper = { command = ["tr", "a-z", "A-Z"] }
copy = { command = ["cat"] }
oops = { command = ["sh", "-c", "echo working; echo oops >&2; exit 3"] }
slow = { command = ["sh", "-c", "echo $$ > {tmp}/group; sleep 300 & echo $! > {tmp}/sleeper; sleep 300"], timeout = 1 }
talk = { command = ["sh", "-c", "echo 'status 1 2' >&3; echo 'data half way' >&3; cat"] }
where = { command = ["sh", "-c", "echo $GREETING $GEARMAN_TASK; pwd"], env = { GREETING = "hi" }, cwd = "{tmp}" }
flood = { command = ["head", "-c", "5000", "/dev/zero"], max_output = 4096 }
missing = { command = ["/nonexistent/program"] }
truth = { command = ["true"] }
'''


@pytest.fixture
def command_pool(gearmand: Gearmand, tmp_path: Path) -> Pool:
    config = tmp_path / "commands.toml"
    config.write_text("[pool]\nkill_grace = 1\n[tasks]\n" + COMMANDS.replace("{tmp}", str(tmp_path)))
    pool = Pool(gearmand, tmp_path, name="commands", processes=2, config=config)
    pool.start()
    yield pool
    pool.stop()


def test_the_payload_is_stdin_and_stdout_the_result_byte_exact(gearmand: Gearmand, command_pool: Pool) -> None:
    assert submit(gearmand, "upper", "hello").result == b"HELLO"
    payload = os.urandom(1024 * 1024)
    assert submit(gearmand, "copy", payload, timeout=60).result == payload


def test_a_failing_command_fails_the_job_with_its_status_and_stderr(gearmand: Gearmand, command_pool: Pool) -> None:
    failed = submit(gearmand, "oops", "")
    assert failed.state == "FAILED"
    (warning,) = [w.decode() for w in failed.warning_updates]
    assert "exited with status 3" in warning and "stderr: oops" in warning, warning
    missing = submit(gearmand, "missing", "")
    assert missing.state == "FAILED"
    assert "cannot run /nonexistent/program: No such file or directory" in missing.warning_updates[0].decode()
    flood = submit(gearmand, "flood", "")
    assert flood.state == "FAILED" and "output over the 4096-byte limit" in flood.warning_updates[0].decode()


def test_status_lines_reach_the_client_and_env_and_cwd_apply(gearmand: Gearmand, command_pool: Pool,
                                                             tmp_path: Path) -> None:
    talked = submit(gearmand, "talk", "rest")
    assert talked.result == b"rest" and list(talked.data_updates) == [b"half way"]
    assert (talked.status["numerator"], talked.status["denominator"]) == (1, 2)
    assert submit(gearmand, "where", "").result.decode().split("\n")[:2] == ["hi where", str(tmp_path)]


def test_a_command_past_its_time_limit_is_killed_with_its_whole_group(gearmand: Gearmand, command_pool: Pool,
                                                                       tmp_path: Path) -> None:
    children = command_pool.children()
    started = time.monotonic()
    timed_out = submit(gearmand, "slow", "")
    assert timed_out.state == "FAILED" and "JobTimeout" in timed_out.warning_updates[0].decode()
    assert time.monotonic() - started < 5
    group, sleeper = (int((tmp_path / name).read_text()) for name in ("group", "sleeper"))
    wait_for(lambda: not pid_alive(sleeper) and not in_group(group), timeout=5, what="the group to be gone")
    assert command_pool.children() == children  # the child gave the job up and lives on
    assert submit(gearmand, "upper", "after").result == b"AFTER"


def test_many_short_commands_leave_no_zombie_and_no_stray(gearmand: Gearmand, command_pool: Pool) -> None:
    client = gearmand.client()
    requests = client.submit_multiple_jobs([{"task": "truth", "data": ""} for _ in range(500)], poll_timeout=60)
    assert all(request.state == "COMPLETE" for request in requests)
    children = command_pool.children()
    left = [pid for pid in descendants(children) if pid not in children]
    assert left == []  # no zombie (an unreaped child is still a /proc entry) and nothing else


def in_group(pgid: int) -> bool:
    return any(group == pgid for _, _, group in process_table().values())


def test_a_stop_past_graceful_timeout_ends_the_whole_group(gearmand: Gearmand, tmp_path: Path) -> None:
    """The master kills the child; the command's group, adopted by the master (a subreaper), goes too."""
    config = tmp_path / "stop.toml"
    config.write_text('[tasks]\nnap = { command = ["sh", "-c", "echo $$ > ' + str(tmp_path) +
                      '/group; sleep 300 & sleep 300"] }\n')
    pool = Pool(gearmand, tmp_path, "--graceful-timeout", "1", name="stopping", processes=1, config=config)
    pool.start()
    gearmand.client().submit_job("nap", "", background=True, wait_until_complete=False)
    group = int(wait_for(lambda: (tmp_path / "group").exists() and (tmp_path / "group").read_text().strip(),
                         what="the command to start"))
    pool.stop()
    wait_for(lambda: not in_group(group), timeout=5, what="the command's group to be gone")
