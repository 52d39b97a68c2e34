"""The soft time limit's alarm (timelimit.py): set lazily, moved on by its
handler, never raised between jobs. The clock and the interval timer are
faked; tests/test_protections.py runs the real signal against real tasks."""

from __future__ import annotations

import pytest

from gearman_workers import timelimit
from gearman_workers.timelimit import JobTimeout, JobTimer


class Alarm:
    """The interval timer and the clock, as the timer sees them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        self.set_to: list[float] = []
        self.unblocked = 0
        monkeypatch.setattr(timelimit.signal, "setitimer", lambda which, seconds: self.set_to.append(seconds))
        monkeypatch.setattr(timelimit.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(JobTimer, "unblock", staticmethod(lambda: self.count_unblock()))
        # Whatever the timer asks, its own handler is the one installed (nobody took it).
        monkeypatch.setattr(timelimit._signal, "getsignal", lambda signum: self.installed)
        self.installed: object = None

    def timer(self) -> JobTimer:
        timer = JobTimer()
        self.installed = timer._handler
        return timer

    def count_unblock(self) -> None:
        self.unblocked += 1

    def fire(self, timer: JobTimer) -> None:
        timer._on_alarm(14, None)


@pytest.fixture
def alarm(monkeypatch: pytest.MonkeyPatch) -> Alarm:
    return Alarm(monkeypatch)


def run_job(timer: JobTimer, alarm: Alarm, limit: float, seconds: float) -> None:
    timer.arm("resize", limit, alarm.now)
    alarm.now += seconds
    timer.job_over()


def test_a_stream_of_short_jobs_sets_the_timer_once_per_limit(alarm: Alarm) -> None:
    timer = alarm.timer()
    for _ in range(100):
        run_job(timer, alarm, 30, 0.1)  # ten seconds of jobs
    assert alarm.set_to == [30] and alarm.unblocked == 0  # no system call per job
    alarm.now = 130.0
    alarm.fire(timer)  # between jobs: nothing to do, nothing set
    run_job(timer, alarm, 30, 0.1)
    assert alarm.set_to == [30, 30]


def test_an_earlier_jobs_alarm_moves_on_to_the_running_jobs_deadline(alarm: Alarm) -> None:
    timer = alarm.timer()
    run_job(timer, alarm, 1, 0.5)
    timer.arm("resize", 1, alarm.now)  # deadline 101.5; the pending alarm comes at 101
    assert alarm.set_to == [1]
    alarm.now = 101.0
    alarm.fire(timer)  # not this job's time yet
    assert alarm.set_to == [1, pytest.approx(0.5)]
    alarm.now = 101.5
    with pytest.raises(JobTimeout, match="task resize exceeded its time limit of 1 s"):
        alarm.fire(timer)
    assert timer.expired and not timer.deadline


def test_a_shorter_limit_than_the_pending_alarm_sets_its_own(alarm: Alarm) -> None:
    timer = alarm.timer()
    run_job(timer, alarm, 30, 0.1)
    timer.arm("resize", 1, alarm.now)
    assert alarm.set_to == [30, 1]


def test_an_alarm_overdue_and_not_delivered_is_unblocked_and_set_again(alarm: Alarm) -> None:
    timer = alarm.timer()
    run_job(timer, alarm, 1, 0.1)
    alarm.now += 5  # the alarm came at 101 and nobody saw it: a task had blocked it
    run_job(timer, alarm, 1, 0.1)
    assert alarm.set_to == [1, 1] and alarm.unblocked == 1


def test_a_task_that_caught_its_timeout_is_answered_timeout_and_the_next_job_starts_clean(alarm: Alarm) -> None:
    timer = alarm.timer()
    timer.arm("resize", 1, alarm.now)
    alarm.now += 1
    with pytest.raises(JobTimeout):
        alarm.fire(timer)  # the task catches it and returns
    with pytest.raises(JobTimeout):
        timer.check()
    timer.arm("resize", 1, alarm.now)
    timer.check()  # a new job: not expired
