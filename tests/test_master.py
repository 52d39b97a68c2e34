"""The master's decisions, driven with a fake process table and a fake
clock: no fork, no signal, no gearmand; each test runs in milliseconds.
A 'child' here is a slot of the real scoreboard written the way a real
child writes it."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from gearman_workers import config as configuration
from gearman_workers import handover as handover_module
from gearman_workers import master as master_module
from gearman_workers import scoreboard as scoreboard_module
from gearman_workers.autoscale import Autoscaler, Decision, QueueDepth
from gearman_workers.children import CRASH_LOOP_LIFETIME
from gearman_workers.commands import Scale, Stop
from gearman_workers.handover import Upgrades
from gearman_workers.master import Master
from gearman_workers.parts import Parts
from gearman_workers.poison import PoisonCheck
from gearman_workers.scoreboard import ChildState, Recycle

SEGV = signal.SIGSEGV  # a wait status of 11: killed by SIGSEGV
KILLED = signal.SIGKILL
EXITED_0 = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProcesses:
    """The process table (processes.py) replaced: forks hand out fake PIDs,
    signals are recorded, exits are queued by the test."""

    def __init__(self) -> None:
        self.fork_lock = threading.Lock()
        self.next_pid = 100
        self.sent: list[tuple[int, str]] = []
        self.exits: list[tuple[int, int]] = []

    def prepare(self, servers: object) -> None:
        pass

    def fork(self, become_child: object) -> int:
        self.next_pid += 1
        return self.next_pid

    def signal(self, pid: int, sig: int) -> None:
        named = sig in signal.Signals._value2member_map_
        self.sent.append((pid, signal.Signals(sig).name if named else f"SIGRTMIN+{sig - signal.SIGRTMIN}"))

    def kill_group(self, pid: int) -> None:
        self.sent.append((pid, "KILL group"))

    def wait(self, block: bool, children: object) -> tuple[int, int] | None:
        return self.exits.pop(0) if self.exits else None

    def adopted(self, children: object) -> set[int]:
        return set()

    def record(self, children: object) -> None:
        pass


class FakeTitle:
    def show(self, doing: str = "") -> None:
        pass


class FakeMasterProcess(Master):
    """Master with fake parts: the process table, systemd and the PID file."""

    def __init__(self, config: configuration.Config) -> None:
        self.recorder = Recorder()  # systemd and the PID file
        self.processes = FakeProcesses()
        self.upgrades = Upgrades(config.pidfile, config.upgrade_timeout, self.recorder, self.recorder,  # type: ignore[arg-type]
                                 self.processes.fork_lock)
        super().__init__(config, {}, Parts(self.processes, self.recorder, self.upgrades, FakeTitle()))
        self.sent, self.exits = self.processes.sent, self.processes.exits

    def submit(self, command: object) -> None:
        self.view.submit(command)  # type: ignore[arg-type]

    def waiting_slots(self) -> dict[int, float]:
        return self.backoffs.waiting

    # --- what a child would do ---------------------------------------------

    def slot_of(self, pid: int) -> int:
        return self.children[pid].slot

    def registers(self, pid: int) -> None:
        writer = self.board.writer(self.slot_of(pid), pid)
        writer.registered_with, writer.registered_once = 1, True
        writer.publish(ChildState.IDLE)

    def runs(self, pid: int, handle: bytes, deadline: float = 0.0) -> None:
        writer = self.board.writer(self.slot_of(pid), pid)
        writer.registered_with, writer.registered_once = 1, True
        writer.publish(ChildState.IDLE)
        writer.busy(master_module.time.monotonic(), deadline, 0, b"resize", b"", handle)

    def asks_recycling(self, pid: int) -> None:
        writer = self.board.writer(self.slot_of(pid), pid)
        writer.registered_with, writer.registered_once, writer.recycle = 1, True, Recycle.MAX_JOBS
        writer.publish(ChildState.IDLE)

    def dies(self, pid: int, signum: int = KILLED) -> None:
        self.exits.append((pid, signum))  # a wait status: the low bits are the signal

    # --- what the test looks at ---------------------------------------------

    def pids(self) -> set[int]:
        return set(self.children)

    def retiring(self) -> set[int]:
        return {pid for pid, c in self.children.items() if c.stop_deadline is not None}

    def registered_staying(self) -> int:
        return sum(1 for c in self._live() if self.board.read(c.slot).registered)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(master_module, "time", fake)
    monkeypatch.setattr(handover_module, "time", fake)
    monkeypatch.setattr(scoreboard_module, "time", fake)
    return fake


def make(tmp_path: Path, **pool: object) -> FakeMasterProcess:
    settings = {"processes": 2, "state_dir": str(tmp_path), **pool}
    lines = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in settings.items())
    path = tmp_path / "pool.toml"
    path.write_text(f"[pool]\n{lines}[tasks]\nresize = \"m:f\"\n")
    return FakeMasterProcess(configuration.load(path=path))


def test_spawns_the_wanted_children_in_the_lowest_slots(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, processes=3)
    master.step()
    assert sorted(c.slot for c in master.children.values()) == [0, 1, 2]
    master.step()
    assert len(master.children) == 3  # no extra spawn while they start


def test_a_registered_child_that_dies_is_replaced_at_once(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    master.step()
    first = min(master.pids())
    master.registers(first)
    master.dies(first)
    master.step()
    assert first not in master.pids() and len(master.children) == 2
    assert master.waiting_slots() == {}


def test_crash_backoff_is_per_slot(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    master.step()
    healthy, crashing = sorted(master.pids())
    master.registers(healthy)
    master.dies(crashing, SEGV)  # never registered: a crash
    master.step()
    (crashing,) = master.pids() - {healthy}
    assert master.slot_of(crashing) == 1  # first crash: retried at once, same slot
    master.dies(crashing, SEGV)
    master.step()
    assert master.pids() == {healthy}  # second crash in a row: slot 1 waits 0.25 s
    master.dies(healthy)  # slot 0's registered child dies meanwhile
    master.step()
    assert len(master.children) == 1 and master.slot_of(max(master.pids())) == 0  # not held back
    clock.advance(0.25)
    master.step()
    assert sorted(c.slot for c in master.children.values()) == [0, 1]


def test_a_back_off_that_ended_unused_does_not_make_the_master_spin(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, heartbeat_timeout=0)
    master.step()
    crashing = max(master.pids())
    for _ in range(2):
        master.dies(crashing, SEGV)
        master.step()
        crashing = max(master.pids(), default=crashing)
    master.submit(Scale(to=1))  # slot 1 is no longer wanted while it backs off
    master.step()
    clock.advance(5)
    master.step()
    assert len(master.children) == 1
    assert master._next_check_in() > 0.5  # a wait, not a busy loop


def test_a_slot_whose_child_registers_and_lives_forgets_its_crashes(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, processes=1)
    master.step()
    for _ in range(3):
        (pid,) = master.pids()
        master.dies(pid, SEGV)
        master.step()
        clock.advance(1)
        master.step()
    (pid,) = master.pids()
    master.registers(pid)
    clock.advance(CRASH_LOOP_LIFETIME)
    master.dies(pid, SEGV)
    master.step()
    assert len(master.children) == 1  # replaced at once: it had registered, and lived
    assert master.waiting_slots() == {}


def test_registered_children_that_crash_at_once_back_off_per_slot(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    master.step()
    healthy, looping = sorted(master.pids())
    master.registers(healthy)
    delays = []
    for _ in range(4):  # each one registers, takes a job, and dies by its task's hand
        master.registers(looping)
        master.dies(looping, SEGV)
        master.step()
        delays.append(round(master.waiting_slots().get(1, clock.now) - clock.now, 2))
        clock.advance(delays[-1])
        master.step()
        (looping,) = master.pids() - {healthy}
    assert delays == [0.0, 0.25, 0.5, 1.0]
    master.dies(healthy, KILLED)  # killed from outside meanwhile: its slot does not wait
    master.step()
    assert len(master.children) == 2 and master.waiting_slots() == {}


def test_children_killed_from_outside_in_a_storm_never_wait(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, processes=1)
    master.step()
    for _ in range(5):
        (pid,) = master.pids()
        master.registers(pid)
        master.dies(pid, KILLED)
        master.step()
        assert len(master.children) == 1 and master.waiting_slots() == {}


def test_recycling_lets_the_old_child_go_only_after_its_successor_registered(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, max_jobs=100)
    master.step()
    old, other = sorted(master.pids())
    master.registers(old)
    master.registers(other)
    master.asks_recycling(old)
    master.step()
    (successor,) = master.pids() - {old, other}
    assert master.retiring() == set() and master.registered_staying() == 2
    master.step()
    assert master.retiring() == set()  # the successor has not registered yet
    master.registers(successor)
    master.step()
    assert master.retiring() == {old} and (old, "SIGTERM") in master.sent
    assert master.registered_staying() == 2
    master.dies(old, EXITED_0)
    master.step()
    assert master.pids() == {other, successor}


def test_max_age_recycles_each_child_with_jitter(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, max_age=100)
    master.step()
    for pid in master.pids():
        master.registers(pid)
    ages = sorted(c.recycle_at - c.started for c in master.children.values())
    assert all(100 <= age <= 110 for age in ages)
    clock.advance(ages[0] + 0.001)
    master.step()
    assert len(master.children) == 3  # a successor for the older one only


def test_a_child_without_heartbeat_is_killed(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, heartbeat_timeout=10)
    master.step()
    quiet, beating = sorted(master.pids())
    master.registers(quiet)
    clock.advance(10.5)
    master.registers(beating)  # publishing is a heartbeat too
    master.step()
    assert (quiet, "KILL group") in master.sent and (beating, "KILL group") not in master.sent
    master.dies(quiet)
    master.step()
    assert len(master.children) == 2  # a registered child: replaced at once


def test_a_busy_child_with_a_time_limit_is_judged_by_its_deadline_not_its_heartbeat(
        tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, job_timeout=120, heartbeat_timeout=10)
    master.step()
    busy, idle = sorted(master.pids())
    master.runs(busy, b"H:gm:8", deadline=clock.now + 120)
    master.registers(idle)
    clock.advance(60)  # a long job: no beats from that child, and it is fine
    master.registers(idle)
    master.step()
    assert (busy, "KILL group") not in master.sent
    clock.advance(65.1)
    master.registers(idle)
    master.step()
    assert master.sent == [(busy, "KILL group")]  # at 120 s + kill_grace 5 s, and only that child


def running_a_limited_job(tmp_path: Path, clock: Clock) -> tuple[FakeMasterProcess, int]:
    """A pool of two (job_timeout 5, kill_grace 2) whose first child has
    just taken job H:gm:7: the master, and that child."""
    master = make(tmp_path, job_timeout=5, kill_grace=2, heartbeat_timeout=0)
    master.step()
    busy, _ = sorted(master.pids())
    master.runs(busy, b"H:gm:7", deadline=clock.now + 5)
    return master, busy


def test_a_busy_child_just_past_its_time_limit_is_told_once_to_unblock_its_alarm(
        tmp_path: Path, clock: Clock) -> None:
    master, busy = running_a_limited_job(tmp_path, clock)
    clock.advance(4.5)
    master.step()
    assert master._next_check_in() == pytest.approx(0.6)  # woken for it, before the routine check in 1 s
    clock.advance(0.55)
    master.step()
    assert master.sent == []  # the alarm's own time
    clock.advance(0.1)
    master.step()
    master.step()
    assert master.sent == [(busy, "SIGRTMIN+2")]  # once, and only to that child


def test_a_busy_child_past_its_time_limit_and_grace_is_killed_and_its_job_recorded(
        tmp_path: Path, clock: Clock) -> None:
    master, busy = running_a_limited_job(tmp_path, clock)
    clock.advance(6.9)
    master.step()
    assert (busy, "KILL group") not in master.sent
    clock.advance(0.2)
    master.step()
    assert (busy, "KILL group") in master.sent
    check = PoisonCheck(master.board)
    assert check.kills(0, b"H:gm:7") == (1, "killed (time limit exceeded)")  # recorded before the kill
    master.dies(busy)
    master.step()
    assert check.kills(0, b"H:gm:7")[0] == 1  # and not twice


def test_poison_accounting_counts_each_death_once(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, heartbeat_timeout=0)
    master.step()
    check = PoisonCheck(master.board)
    first, second = sorted(master.pids())
    master.runs(first, b"H:gm:9")
    master.dies(first, SEGV)
    # Dead but not yet reaped: a child that receives the job sees it already.
    assert not check.clear(b"H:gm:9")  # the job's next run looks closer
    assert check.kills(0, b"H:gm:9") == (1, "died while running it")
    master.step()
    assert check.kills(0, b"H:gm:9") == (1, "killed by SIGSEGV")
    master.runs(second, b"H:gm:9")  # gearmand hands it out again
    master.dies(second, SEGV)
    assert check.kills(0, b"H:gm:9")[0] == 2  # dead, unreaped, after a recorded death
    master.step()
    assert check.kills(0, b"H:gm:9")[0] == 2
    assert check.kills(1, b"H:gm:9") == (0, "") and check.kills(0, b"H:gm:10") == (0, "")
    assert check.clear(b"H:gm:10") and not check.clear(b"H:gm:9")


def test_a_job_whose_handle_begins_a_dead_child_s_handle_is_not_counted_against(
        tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, heartbeat_timeout=0)
    master.step()
    check = PoisonCheck(master.board)
    first, _ = sorted(master.pids())
    master.runs(first, b"H:gm:100")
    master.dies(first, SEGV)  # not yet reaped: its slot still names H:gm:100
    assert not check.clear(b"H:gm:10")  # the one search before a job finds H:gm:10 in it ...
    assert check.kills(0, b"H:gm:10") == (0, "")  # ... and the exact look says it is another job
    assert check.kills(0, b"H:gm:100") == (1, "died while running it")


def test_graceful_stop_terms_every_child_then_kills_stragglers(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, graceful_timeout=30, heartbeat_timeout=0)
    master.step()
    quick, slow = sorted(master.pids())
    master.submit(Stop("test"))
    master.step()
    assert {(quick, "SIGTERM"), (slow, "SIGTERM")} <= set(master.sent)
    master.dies(quick, EXITED_0)
    clock.advance(30)
    master.step()
    assert (slow, "KILL group") in master.sent and (quick, "KILL group") not in master.sent
    assert len(master.children) == 1  # nothing respawned while stopping


def test_scaling_down_retires_idle_children_first(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, processes=3)
    master.step()
    a, b, c = sorted(master.pids())
    for pid in (a, b, c):
        master.registers(pid)
    master.runs(c, b"H:gm:1")
    master.submit(Scale(to=1))
    master.step()
    assert master.retiring() == {a, b}


def test_every_exit_is_counted_under_its_reason(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, processes=4, job_timeout=5, kill_grace=1, heartbeat_timeout=10, max_jobs=100)
    master.step()
    timed_out, silent, crashing, shot = sorted(master.pids())
    for pid in master.pids():
        master.registers(pid)
    master.runs(timed_out, b"H:gm:1", deadline=clock.now + 5)
    clock.advance(10.5)
    for pid in (crashing, shot):
        master.registers(pid)
    master.step()  # timed_out past deadline + grace, silent without heartbeat: both killed
    for pid in (timed_out, silent, shot):
        master.dies(pid)  # shot: a SIGKILL nobody in the pool sent (OOM killer, kill -9)
    master.dies(crashing, SEGV)
    master.step()
    assert master.child_exits == {"crash": 1, "killed": 1, "recycled": 0, "timeout": 1, "hung": 1, "stopped": 0,
                                  "cancelled": 0}
    for pid in master.pids():
        master.registers(pid)
    recycled = min(master.pids())
    master.asks_recycling(recycled)
    master.step()
    for pid in master.pids():
        master.registers(pid)
    master.step()
    assert master.retiring() == {recycled}
    master.dies(recycled, EXITED_0)
    master.step()
    master.submit(Stop("test"))
    master.step()
    for pid in master.pids():
        master.dies(pid, EXITED_0)
    master.step()
    assert master.child_exits == {"crash": 1, "killed": 1, "recycled": 1, "timeout": 1, "hung": 1, "stopped": 4,
                                  "cancelled": 0}


def test_the_fake_signal_numbers_are_wait_statuses() -> None:
    assert os.waitstatus_to_exitcode(SEGV) == -signal.SIGSEGV


# --- upgrades: the predecessor's side of a handover ------------------------------


class FakeSuccessor:
    """What handover.Successor tells the master, set by the test."""

    def __init__(self, deadline: float) -> None:
        self.pid, self.ready_fd, self.deadline = 555, -1, deadline
        self.ready, self.given_up = False, None

    def poll(self) -> None:
        pass

    def give_up(self, why: str) -> None:
        self.given_up = self.given_up or why

    def overdue(self, now: float) -> bool:
        return not self.ready and self.given_up is None and now >= self.deadline

    def close(self) -> None:
        pass


class Recorder:
    """Stands for the notifier and the PID file: records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []
        self.muted = False

    def send(self, **fields: object) -> None:
        if not self.muted:
            self.told += list(fields.items())

    def status(self, text: str) -> None:
        self.send(status=text)

    def kick_watchdog(self) -> None:
        pass

    def watchdog_due(self) -> float | None:
        return None

    def write(self, pid: int | None = None) -> None:
        self.told.append(("pidfile", pid))


def upgrading(tmp_path: Path, clock: Clock) -> tuple[FakeMasterProcess, FakeSuccessor, Recorder]:
    master = make(tmp_path, upgrade_timeout=20)
    master.step()
    for pid in master.pids():
        master.registers(pid)
    successor = master.upgrades.successor = FakeSuccessor(clock.now + 20)  # type: ignore[assignment]
    master.recorder.told.clear()  # what the start said
    return master, successor, master.recorder


def outcome(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "default.pid.upgrade").read_text())


def test_a_ready_successor_becomes_the_main_process_and_the_old_children_drain(tmp_path: Path, clock: Clock) -> None:
    master, successor, recorder = upgrading(tmp_path, clock)
    old = master.pids()
    successor.ready = True
    master.step()
    assert recorder.told[:2] == [("mainpid", 555), ("pidfile", 555)]  # systemd first, then the PID file
    assert recorder.muted and master.upgrades.handed_over and master.stopping
    assert master.retiring() == old and {(pid, "SIGTERM") for pid in old} <= set(master.sent)
    assert outcome(tmp_path) == {"from": master.pid, "to": 555, "ok": True, "reason": "handed over"}
    master.step()
    assert master.pids() == old  # nothing new is spawned: the successor serves


def test_a_successor_that_failed_leaves_the_running_pool_alone(tmp_path: Path, clock: Clock) -> None:
    master, successor, recorder = upgrading(tmp_path, clock)
    old = master.pids()
    successor.give_up("failed: cannot load task 'resize': SyntaxError")
    master.step()
    assert master.upgrades.successor is None and not master.stopping and not master.upgrades.handed_over
    assert master.pids() == old and master.sent == [] and ("mainpid", 555) not in recorder.told
    assert outcome(tmp_path)["reason"] == "the new master failed: cannot load task 'resize': SyntaxError"


def test_a_successor_not_ready_by_upgrade_timeout_is_given_up(tmp_path: Path, clock: Clock) -> None:
    master, successor, _ = upgrading(tmp_path, clock)
    clock.advance(19)
    master.step()
    assert master.upgrades.successor is successor and successor.given_up is None
    clock.advance(1)
    master.step()
    assert master.upgrades.successor is None and successor.given_up == "was not ready within upgrade_timeout 20 s"
    assert not master.stopping and outcome(tmp_path)["ok"] is False


def test_a_stop_during_an_upgrade_gives_the_successor_up_too(tmp_path: Path, clock: Clock) -> None:
    master, successor, _ = upgrading(tmp_path, clock)
    master.submit(Stop("SIGTERM"))
    master.step()
    assert successor.given_up == "the pool is stopping" and master.stopping and not master.upgrades.handed_over


class FakeHandover:
    """What a successor inherited; it has announced itself (ready_fd closed)."""

    def __init__(self) -> None:
        self.ready_fd, self.predecessor, self.alive = -1, 77, True

    def predecessor_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        pass


def test_a_successor_speaks_to_systemd_only_once_its_predecessor_handed_over(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    recorder = master.recorder
    recorder.muted = True
    master.upgrades.handover, master.ready = FakeHandover(), True  # type: ignore[assignment]
    master._report()
    assert recorder.muted and recorder.told == []  # not in charge yet: systemd would reject it
    (tmp_path / "default.pid").write_text(f"{master.pid}\n")  # the predecessor's last act
    master._report()
    assert not recorder.muted and ("mainpid", master.pid) in recorder.told and master.upgrades.handover is None


def test_a_successor_whose_predecessor_died_mid_handover_takes_charge(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    recorder = master.recorder
    recorder.muted = True
    handover = master.upgrades.handover = FakeHandover()  # type: ignore[assignment]
    master.ready = True
    handover.alive = False
    master._report()
    assert ("pidfile", None) in recorder.told and not recorder.muted and master.upgrades.handover is None


# --- groups: dedicated children, and autoscaling ------------------------------------


def make_grouped(tmp_path: Path, pool: str = "", tasks: str = "") -> FakeMasterProcess:
    path = tmp_path / "pool.toml"
    path.write_text(f'[pool]\nstate_dir = "{tmp_path}"\nheartbeat_timeout = 0\n{pool}\n[tasks]\n'
                    f'resize = "m:f"\nmail = {{ call = "m:g", processes = 2 }}\n{tasks}')
    return FakeMasterProcess(configuration.load(path=path))


def by_group(master: FakeMasterProcess) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for child in master._live():
        counts[child.dedicated_to] = counts.get(child.dedicated_to, 0) + 1
    return counts


def test_dedicated_children_are_kept_apart_from_the_shared_ones(tmp_path: Path, clock: Clock) -> None:
    master = make_grouped(tmp_path, "processes = 1")
    master.step()
    assert by_group(master) == {None: 1, "mail": 2}
    mail = next(pid for pid, c in master.children.items() if c.dedicated_to == "mail")
    for pid in master.pids():
        master.registers(pid)
    master.dies(mail)
    master.step()
    assert by_group(master) == {None: 1, "mail": 2}  # replaced in its own group
    master.submit(Scale(to=3))
    master.step()
    assert by_group(master) == {None: 3, "mail": 2}  # scaling moves the shared children only


def test_a_reload_that_drops_a_dedicated_group_retires_its_children(tmp_path: Path, clock: Clock) -> None:
    master = make_grouped(tmp_path, "processes = 1")
    master.step()
    mail = {pid for pid, c in master.children.items() if c.dedicated_to == "mail"}
    master.config = configuration.load(path=master.config.source)
    master.config.tasks["mail"] = configuration.TaskSpec("m:g")  # as if reloaded: mail is shared now
    master.step()
    assert master.retiring() >= mail and by_group(master).get("mail") is None


def test_a_crash_looping_dedicated_task_never_holds_back_the_shared_children(tmp_path: Path, clock: Clock) -> None:
    master = make_grouped(tmp_path, "processes = 2")
    master.step()
    for _ in range(3):  # mail's children crash before registering: their slots back off
        for pid, child in list(master.children.items()):
            if child.dedicated_to == "mail":
                master.dies(pid, SEGV)
        master.step()
    assert by_group(master).get("mail", 0) < 2  # backing off
    master.submit(Scale(to=4))
    master.step()
    assert by_group(master)[None] == 4  # at once, in slots of their own, not mail's backing-off ones


def depth(waiting: int, answered: int = 1) -> QueueDepth:
    return QueueDepth(waiting, answered, 2)


def test_autoscaling_follows_the_queue_within_its_bounds(tmp_path: Path, clock: Clock) -> None:
    master = make_grouped(tmp_path, "min_processes = 1\nmax_processes = 4\nscale_down_after = 30")
    master.step()
    assert master.desired == 1
    (shared,) = [pid for pid, c in master.children.items() if c.dedicated_to is None]
    master.runs(shared, b"H:gm:1")
    master.autoscale(depth(10))
    assert master.desired == 4  # all busy, 10 waiting: up to max at once
    master.step()
    master.autoscale(depth(10))
    assert master.desired == 4 and master.autoscaler.decisions == {"up": 1, "down": 0}
    master.submit(Scale(to=10))  # an operator's scale is refused while autoscaling
    master.step()
    assert master.desired == 4
    for pid, child in master.children.items():
        if child.dedicated_to is None:
            master.registers(pid)
    master.autoscale(depth(0))
    clock.advance(29)
    master.autoscale(depth(0))
    assert master.desired == 4  # not quiet long enough
    master.autoscale(depth(1))  # a waiting job starts the clock again
    clock.advance(29)
    master.autoscale(depth(0))
    assert master.desired == 4
    clock.advance(30)
    master.autoscale(depth(0))
    assert master.desired == 3
    master.autoscale(depth(0, answered=0))  # no gearmand answered: no news, no decision
    assert master.desired == 3
    for _ in range(5):
        master.autoscale(depth(0))
    assert master.desired == 1 and master.autoscaler.decisions == {"up": 1, "down": 3}


def test_starting_children_count_as_spare(tmp_path: Path, clock: Clock) -> None:
    scaler = Autoscaler(1, 8, 10)
    assert scaler.decide(0, depth(5), desired=2, spare=1) is None  # one still starting: wait for it
    assert scaler.decide(0, depth(5), desired=2, spare=0) == Decision(7, "5 job(s) waiting and all 2 children busy")
    assert scaler.decide(0, depth(0), desired=9, spare=3).to == 8  # bounds moved by a reload: back inside


# --- what operators expect of TTOU and of a start without gearmand ------------------------


def test_ttou_stops_at_one_child_and_only_a_scale_by_number_empties_the_pool(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path, processes=1)
    master.step()
    master.submit(Scale(by=-1))
    master.step()
    assert master.desired == 1 and len(master.children) == 1
    master.submit(Scale(to=0))  # gm-ctl scale 0 --allow-zero
    master.step()
    assert master.desired == 0
    master.submit(Scale(by=-1))
    master.step()
    assert master.desired == 0  # TTOU at zero stays there


def test_without_gearmand_a_first_start_is_ready_after_connect_timeout_saying_what_it_waits_for(
        tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    master.step()
    clock.advance(4.9)
    master.step()
    assert ("ready", 1) not in master.recorder.told  # the children still try
    clock.advance(0.1)
    master.step()
    assert ("ready", 1) in master.recorder.told
    servers = ", ".join(map(str, master.config.servers))
    assert ("status", f"0/2 children registered, 0 busy; waiting for gearmand {servers}") in master.recorder.told
    for pid in master.pids():
        master.registers(pid)
    master.step()
    assert master.recorder.told[-1] == ("status", "2/2 children registered, 0 busy")


def test_a_successor_without_gearmand_never_claims_ready(tmp_path: Path, clock: Clock) -> None:
    master = make(tmp_path)
    master.upgrades.handover = FakeHandover()  # type: ignore[assignment]
    master.upgrades.handover.ready_fd = 7  # not yet announced
    master.step()
    clock.advance(60)
    master.step()
    assert not master.ready  # its predecessor serves until the new children registered
