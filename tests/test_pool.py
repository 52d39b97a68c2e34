"""The pool against a real gearmand: registration, jobs, deaths, stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gearman_workers import identities
from gearman_workers import protocol as p
from helpers import EXAMPLES, Gearmand, Pool, Relay, pid_alive, run_cli, running, submit, wait_for


def test_children_register_every_task(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=3)) as pool:
        workers = gearmand.workers("test")
        assert len(workers) == 3
        assert {pid for _, pid, _ in workers} == pool.children()
        for _, _, functions in workers:
            assert {"echo", "reverse", "slow", "fail"} <= set(functions)
        assert gearmand.status()["echo"][2] == 3


def test_jobs_come_back_right(gearmand: Gearmand, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4
    with running(Pool(gearmand, tmp_path)):
        assert submit(gearmand, "echo", payload).result == payload
        assert submit(gearmand, "reverse", "héllo").result == "olléh".encode()
        assert submit(gearmand, "echo", b"").result == b""


def test_preload_runs_once_in_the_master(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        answers = {submit(gearmand, "whoami", str(i)).result for i in range(20)}
        assert all(a.endswith(b"hello from the master") for a in answers)
        assert {int(a.split()[0]) for a in answers} <= pool.children()


def test_killed_child_is_replaced_by_one_that_registers(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        before = pool.children()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        after = pool.wait_registered(2, exclude={victim}, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert victim not in after and len(after & before) == 1
        assert submit(gearmand, "echo", b"still here").result == b"still here"
        assert "killed by SIGKILL" in pool.log()


def test_child_killed_mid_job_the_client_still_gets_its_result(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=1)) as pool:
        result: dict[str, object] = {}
        client = threading.Thread(target=lambda: result.update(r=submit(gearmand, "slow", "1")))
        client.start()
        wait_for(lambda: gearmand.status()["slow"][1] == 1, what="the slow job to run")
        (victim,) = pool.children()
        os.kill(victim, signal.SIGKILL)
        client.join(15)
        request = result["r"]
        assert request.complete and request.result.startswith(b"slept 1s")  # type: ignore[attr-defined]
        assert int(request.result.split()[-1]) != victim  # type: ignore[attr-defined]


def test_children_die_with_a_killed_master(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        children = pool.children()
        pool.signal(signal.SIGKILL)
        pool.wait_exit()
        started = time.monotonic()
        wait_for(lambda: not any(pid_alive(pid) for pid in children), timeout=1.0, what="orphans to exit")
        assert time.monotonic() - started < 1.0
        wait_for(lambda: not gearmand.workers("test"), what="gearmand to drop the workers")


def test_term_finishes_the_job_in_flight_then_exits_zero(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        children = pool.children()
        result: dict[str, object] = {}
        client = threading.Thread(target=lambda: result.update(r=submit(gearmand, "slow", "1.5")))
        client.start()
        wait_for(lambda: gearmand.status()["slow"][1] == 1, what="the slow job to run")
        pool.signal(signal.SIGTERM)
        assert pool.wait_exit(15) == 0
        client.join(15)
        assert result["r"].result.startswith(b"slept 1.5s")  # type: ignore[attr-defined]
        assert not any(pid_alive(pid) for pid in children)
        assert not pool.pidfile.exists()


def test_idle_pool_stops_at_once(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        started = time.monotonic()
        pool.signal(signal.SIGTERM)
        assert pool.wait_exit() == 0
        # Far below the poll timeout (5 s) and the graceful timeout (10 s).
        assert time.monotonic() - started < 2.0


def unread_from(pid: int, port: int) -> int | None:
    """Bytes waiting unread in PID's socket connected to PORT on loopback
    (the Recv-Q that `ss` shows), from /proc: None if it has none."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[9] in inodes:
            return int(fields[4].split(":")[1], 16)
    return None


def test_after_a_job_the_child_leaves_the_no_job_unread_until_the_next_noop(gearmand: Gearmand,
                                                                          tmp_path: Path) -> None:
    # The result goes out with GRAB and PRE_SLEEP together. gearmand's NO_JOB
    # (12 bytes) needs nothing from the child, so it stays in the socket and
    # is read with the next NOOP: one wake-up per job less.
    with running(Pool(gearmand, tmp_path, processes=1)) as pool:
        (child,) = pool.children()
        for number in range(3):
            assert submit(gearmand, "echo", str(number)).result == str(number).encode()
            wait_for(lambda: unread_from(child, gearmand.port) == p.HEADER_SIZE,
                     what="the NO_JOB to wait unread in the child's socket")


def bare_acks_from(pid: int, port: int) -> int:
    """Segments without data that PID's connection to PORT on loopback has
    sent (`ss -ti`: segs_out less data_segs_out)."""
    out = subprocess.run(["ss", "-tinpH", "state", "established", f"dport = :{port}"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    for address, info in zip(out[::2], out[1::2], strict=True):
        if f"pid={pid}," in address:
            counts = dict(field.split(":", 1) for field in info.split() if field.count(":") == 1)
            return int(counts.get("segs_out", 0)) - int(counts.get("data_segs_out", 0))
    raise AssertionError(f"no connection of {pid} to port {port}")


def test_a_child_fed_one_job_at_a_time_answers_the_wake_up_before_reading_it(gearmand: Gearmand,
                                                                           tmp_path: Path) -> None:
    # Read first, gearmand's NO_JOB and NOOP would be acknowledged at once by
    # a bare ACK, sent from inside the read before the child's GRAB could go
    # out: a segment and some microseconds per job. Answered first, the GRAB
    # carries the ACK. (A lone NO_JOB that waits past the delayed-ACK timer,
    # 40 ms, is acknowledged by the timer: a slow machine's share.)
    with running(Pool(gearmand, tmp_path, processes=1)) as pool:
        (child,) = pool.children()
        assert submit(gearmand, "echo", "first").result == b"first"
        before = bare_acks_from(child, gearmand.port)
        jobs = 30
        for number in range(jobs):
            assert submit(gearmand, "echo", str(number)).result == str(number).encode()
        assert bare_acks_from(child, gearmand.port) - before < jobs // 3


class TailHoldingRelay(Relay):
    """Between a pool's child and gearmand: every JOB_ASSIGN reaches the
    child without its last bytes until the child has read the rest, as
    the last segment of a big job can trail the others across a real
    network."""

    TAIL = 5  # fewer bytes than any packet but a bare header: below a dozing socket's low-water mark

    def __init__(self, gearmand_port: int) -> None:
        self.held = 0  # JOB_ASSIGNs whose tail was held back
        super().__init__(gearmand_port)

    def _to_client(self, upstream: socket.socket, child: socket.socket) -> None:
        child_port = child.getpeername()[1]
        stream = b""
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                stream += data
                while len(stream) >= p.HEADER_SIZE:
                    _, kind, length = p.HEADER.unpack_from(stream)
                    end = p.HEADER_SIZE + length
                    if len(stream) < end:
                        break
                    packet, stream = stream[:end], stream[end:]
                    if kind != p.JOB_ASSIGN_UNIQ:
                        child.sendall(packet)
                        continue
                    child.sendall(packet[:-self.TAIL])
                    wait_for(lambda: unread_at(child_port, self.port) == 0, what="the child to read the head")
                    self.held += 1
                    child.sendall(packet[-self.TAIL:])
        with contextlib.suppress(OSError):
            child.shutdown(socket.SHUT_RDWR)


class MutedRelay(Relay):
    """Between a pool's child and gearmand: nothing gearmand sends reaches
    the child, and the connection stays up (a gearmand host cut off
    without a reset)."""

    def _to_client(self, upstream: socket.socket, child: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while upstream.recv(65536):
                pass


def unread_at(local_port: int, remote_port: int) -> int | None:
    """Bytes waiting unread in the loopback socket from LOCAL_PORT to REMOTE_PORT."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port and int(fields[2].split(":")[1], 16) == remote_port:
            return int(fields[4].split(":")[1], 16)
    return None


def test_a_job_whose_last_bytes_come_late_is_still_run(gearmand: Gearmand, tmp_path: Path) -> None:
    # A child that sleeps between jobs raises its socket's low-water mark, so
    # that a lone NO_JOB does not wake it. A job read in part must lower it
    # again: else a last segment shorter than the mark never wakes the child,
    # and the job hangs with it until the connection drops.
    relay = TailHoldingRelay(gearmand.port)
    try:
        with running(Pool(gearmand, tmp_path, "--servers", f"127.0.0.1:{relay.port}", processes=1)):
            for number, size in enumerate((1, 3000, 70_000)):
                payload = bytes([number]) * size
                assert submit(gearmand, "echo", payload).result == payload
            assert relay.held == 3
    finally:
        relay.close()


def test_a_gearmand_silent_while_it_owes_an_answer_is_left_and_connected_again(gearmand: Gearmand,
                                                                             tmp_path: Path) -> None:
    # gearmand answers a GRAB at once. One that owes the answer for
    # connect_timeout is gone (its host cut off without a reset): the child
    # leaves the connection and makes a new one, rather than wait forever.
    relay = MutedRelay(gearmand.port)
    try:
        with running(Pool(gearmand, tmp_path, "--servers", f"127.0.0.1:{relay.port}", "--connect-timeout", "1",
                          processes=1)) as pool:
            wait_for(lambda: relay.connections >= 2, what="the child to connect again")
            assert "gearmand sent nothing for 1 s while it owed an answer" in pool.log()
    finally:
        relay.close()


def test_term_right_after_a_job_stops_at_once(gearmand: Gearmand, tmp_path: Path) -> None:
    # After a job the child dozes through gearmand's NO_JOB; a stopping child
    # must still read it at once rather than wait connect_timeout (here 30 s,
    # beyond wait_exit's limit) for an answer it already has.
    with running(Pool(gearmand, tmp_path, "--connect-timeout", "30", "--heartbeat-timeout", "60",
                      processes=1)) as pool:
        for number in range(3):
            assert submit(gearmand, "echo", str(number)).result == str(number).encode()
        pool.signal(signal.SIGTERM)
        assert pool.wait_exit() == 0


@pytest.mark.parametrize(("task", "expected"), [
    ("none", ("COMPLETE", b"")),
    ("raises", ("FAILED", b"ValueError: bad input")),
    ("int", ("FAILED", b"TaskResultError: task returned int")),
])
def test_bad_task_results_answer_the_client_and_the_child_lives(
        gearmand: Gearmand, tmp_path: Path, task: str, expected: tuple[str, bytes]) -> None:
    module = tmp_path / "badtasks.py"
    module.write_text(
        "def none(worker, job):\n    return None\n"
        "def raises(worker, job):\n    raise ValueError('bad input')\n"
        "def int_(worker, job):\n    return 42\n")
    pool = Pool(gearmand, tmp_path, "--python-path", str(tmp_path), "--python-path", str(EXAMPLES),
                "--task", "none=badtasks:none",
                "--task", "raises=badtasks:raises", "--task", "int=badtasks:int_", processes=1)
    with running(pool):
        (child,) = pool.children()
        for _ in range(3):
            request = submit(gearmand, task, b"x")
            state_name, text = expected
            assert request.state == state_name
            if state_name == "FAILED":
                assert any(text in w for w in request.warning_updates)
            else:
                assert request.result == text
        assert pool.children() == {child}
        assert submit(gearmand, "echo", b"after").result == b"after"


def test_gearmand_restart_workers_come_back(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        children = pool.children()
        gearmand.stop()
        gearmand.start()
        pool.wait_registered(2)
        assert pool.children() == children  # reconnected, not respawned
        assert submit(gearmand, "reverse", b"abc").result == b"cba"
        assert pool.log().count("unreachable") <= 2  # once per child and outage


def test_two_servers_are_both_used(gearmand: Gearmand, tmp_path: Path) -> None:
    second = Gearmand(tmp_path)
    second.start()
    try:
        pool = Pool(gearmand, tmp_path, "--servers", f"{gearmand.address},{second.address}", processes=2)
        with running(pool):
            wait_for(lambda: len(second.worker_pids("test")) == 2, what="registration on the second server")
            assert submit(second, "echo", b"two").result == b"two"
            assert submit(gearmand, "echo", b"one").result == b"one"
    finally:
        second.stop()


def test_second_master_on_the_same_pidfile_refuses(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path)) as pool:
        second = subprocess.run(pool.argv, capture_output=True, text=True, timeout=30)
        assert second.returncode == 4
        assert f"another master (PID {pool.proc.pid}) already holds" in second.stderr  # type: ignore[union-attr]
        assert pool.children() and len(gearmand.workers("test")) == 2


def test_ttin_ttou_change_the_number_of_children(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        pool.signal(signal.SIGTTIN)
        pool.wait_registered(3)
        # Standard signals do not queue: wait for each to take effect.
        pool.signal(signal.SIGTTOU)
        pool.wait_registered(2)
        pool.signal(signal.SIGTTOU)
        pool.wait_registered(1)


def test_hup_replaces_every_child_keeping_the_pool_serving(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path, processes=2)) as pool:
        old = pool.children()
        pool.signal(signal.SIGHUP)
        new = pool.wait_registered(2, exclude=old)
        assert not new & old
        assert "replacing the children one at a time" in pool.log()


def test_daemon_mode_detaches_and_stops_cleanly(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = Pool(gearmand, tmp_path, "--daemon", "--log-file", str(tmp_path / "daemon.log"))
    result = run_cli("gearman-workers", *pool.argv[1:])
    assert result.returncode == 0, result.stderr
    pid = wait_for(lambda: pool.pidfile.exists() and int(pool.pidfile.read_text()), what="the PID file")
    try:
        wait_for(lambda: len(gearmand.workers("test")) == 2, what="the daemon's children")
        assert submit(gearmand, "echo", b"daemon").result == b"daemon"
        assert os.getsid(pid) != os.getsid(0)  # detached into a session of its own
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), what="the daemon to exit")
    assert not pool.pidfile.exists()
    assert f"master {pid} exits with status 0" in (tmp_path / "daemon.log").read_text()


@pytest.mark.parametrize(("flags", "message"), [
    (["--processes", "-1"], "--processes: expected a number from 1 to 1024, got -1"),
    (["--processes", "0"], "--processes: expected a number from 1 to 1024, got 0"),
    (["--servers", "localhost"], "--servers: expected host:port"),
    (["--graceful-timeout", "soon"], "--graceful-timeout: expected a number of seconds"),
    (["--task", "echo"], "--task 'echo': expected NAME=module:callable"),
    (["--log-level", "loud"], "--log-level: expected one of debug, info, warning, error"),
])
def test_bad_flags_exit_2_naming_the_problem(tmp_path: Path, flags: list[str], message: str) -> None:
    state_dir = tmp_path / "state"
    result = run_cli("gearman-workers", "--config", "examples/gearman-workers.toml",
                     "--state-dir", str(state_dir), *flags, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # one line, naming the flag
    assert line.startswith(f"gearman-workers: config error: {message}")
    assert not state_dir.exists()


def test_bad_config_file_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[pool]\nproceses = 3\n[tasks]\necho = "tasks:echo"\n')
    result = run_cli("gearman-workers", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == f"gearman-workers: config error: {config}: unknown key [pool] proceses " \
                                    "(did you mean processes?)"


def test_task_code_that_cannot_import_exits_3(tmp_path: Path) -> None:
    result = run_cli("gearman-workers", "--task", "x=no_such_module:run", "--state-dir", str(tmp_path))
    assert result.returncode == 3
    assert "cannot load task 'x': no_such_module:run: ModuleNotFoundError" in result.stderr
    assert not list(tmp_path.iterdir())


def test_check_config_validates_without_starting(tmp_path: Path) -> None:
    result = run_cli("gearman-workers", "--config", "examples/gearman-workers.toml", "--check-config",
                     "--state-dir", str(tmp_path / "s"), cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert "configuration OK: pool examples" in result.stdout
    assert not (tmp_path / "s").exists()


# --- gm-cleanup -----------------------------------------------------------


def _record(state_dir: Path, master: identities.ProcessIdentity, children: list[identities.ProcessIdentity]) -> Path:
    path = state_dir / "old.state.json"
    identities.write(path, identities.PoolProcesses("old", identities.boot_id(), master, children))
    return path


def _sleeper(name: str = "sleep") -> subprocess.Popen:
    """A process that sleeps under NAME (argv[0], what /proc/PID/cmdline shows)."""
    return subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 60"], stdin=subprocess.DEVNULL)


def test_cleanup_leaves_an_unrelated_process_with_a_recorded_pid_alive(tmp_path: Path) -> None:
    unrelated = _sleeper()
    try:
        real = identities.ProcessIdentity.of(unrelated.pid)
        assert real is not None
        # The PID was recorded for a process that started at another time.
        path = _record(tmp_path, identities.ProcessIdentity(unrelated.pid, real.start_time - 1), [])
        result = run_cli("gm-cleanup", "--state-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert unrelated.poll() is None
        assert f"pid {unrelated.pid} is not a leftover of ours" in result.stderr
        assert not path.exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_cleanup_stops_a_real_leftover(tmp_path: Path) -> None:
    leftover = _sleeper("gearman-workers")
    try:
        identity = identities.ProcessIdentity.of(leftover.pid)
        assert identity is not None
        _record(tmp_path, identities.ProcessIdentity(2**22 - 1, 1), [identity])
        result = run_cli("gm-cleanup", "--state-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert leftover.wait(5) == -signal.SIGTERM
        assert f"stopping leftover process {leftover.pid}" in result.stderr
    finally:
        leftover.kill()
        leftover.wait()


def test_cleanup_with_nothing_left_and_with_a_corrupt_file(tmp_path: Path) -> None:
    assert run_cli("gm-cleanup", "--state-dir", str(tmp_path / "none")).returncode == 0
    corrupt = tmp_path / "broken.state.json"
    corrupt.write_bytes(b"\x00{not json")
    result = run_cli("gm-cleanup", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "is corrupt" in result.stderr and not corrupt.exists()


def test_cleanup_does_not_touch_a_running_pool(gearmand: Gearmand, tmp_path: Path) -> None:
    with running(Pool(gearmand, tmp_path)) as pool:
        children = pool.children()
        result = run_cli("gm-cleanup", "--state-dir", str(pool.state_dir))
        assert result.returncode == 0
        assert "is running" in result.stderr
        assert pool.children() == children and pool.pidfile.exists()
