"""The master's record of each child, and the rules the master applies to
one child at a time: the limits it is forked with, when it is due for
replacement, when it must be killed, why it left, and how long its slot
waits after a crash. Pure functions of a child and its scoreboard slot;
the master (master.py) acts on what they answer."""

from __future__ import annotations

import dataclasses
import os
import random
import signal

from .backoff import Backoff
from .child import Limits
from .config import Config
from .poison import CANCELLED, TIME_LIMIT_EXCEEDED
from .scoreboard import ChildState, Recycle, SlotInfo
from .timelimit import UNBLOCK_AFTER, UNBLOCK_SIGNAL

CRASH_BACKOFF_FIRST, CRASH_BACKOFF_MAX = 0.25, 30.0
# A registered child that dies by itself sooner than this after its start
# is crash-looping (task code that kills every child it runs in): its slot
# backs off. A child killed from outside (SIGKILL) never makes it wait.
CRASH_LOOP_LIFETIME = 5.0
JITTER = 0.1  # recycling limits vary by up to 10 % per child, so children do not leave together
MIB = 1024 * 1024

# Why the master killed a child (logged, and recorded against its job).
KILLED_TIMEOUT = TIME_LIMIT_EXCEEDED  # the next child answers its job JobTimeout (poison.py)
KILLED_HUNG = "no heartbeat"
KILLED_STOP = "did not stop in time"
KILLED_CANCEL = CANCELLED  # the job was cancelled and its task did not let go (control/cancel.py)

# Why a child left, in the words of gearman_workers_child_exits_total.
EXIT_REASONS = ("crash", "killed", "recycled", "timeout", "hung", "stopped", "cancelled")


@dataclasses.dataclass
class Child:
    pid: int
    slot: int
    generation: int
    started: float
    limits: Limits
    recycle_at: float | None = None   # max_age reached (monotonic), with jitter
    replacing_because: str | None = None  # due for replacement, and why
    stop_deadline: float | None = None
    killed_because: str | None = None
    poison_recorded: bool = False
    warned_long_job: str = ""  # the job handle long_job_warning was logged for
    unblocked_job: float = 0.0  # the busy_since of the job it was sent UNBLOCK_SIGNAL for
    dedicated_to: str | None = None  # the one task it registers; None: a shared child (every other task)
    cancelling: str = ""  # the handle of the job it was told to give up (control/cancel.py)
    cancel_deadline: float | None = None  # killed if still running that job then

    @property
    def live(self) -> bool:
        """Neither asked to stop nor killed."""
        return self.stop_deadline is None and self.killed_because is None


def jittered(limit: float) -> float:
    return limit * (1 + random.uniform(0, JITTER))


def limits_for(config: Config) -> Limits:
    """One child's limits: the configuration's, recycling ones jittered."""
    return Limits(max_jobs=int(jittered(config.max_jobs)), max_memory=config.max_memory * MIB,
                  heartbeat_interval=config.heartbeat_timeout / 5, poison_kills=config.poison_kills,
                  kill_grace=config.kill_grace)


def replacement_reason(child: Child, info: SlotInfo, config: Config, generation: int, now: float) -> str | None:
    """Why CHILD should be replaced by a fresh one, or None."""
    if child.generation != generation:
        return "configuration reloaded"
    if info.recycle == Recycle.MAX_JOBS:
        return f"{info.jobs_done + info.jobs_failed} jobs done, max_jobs {config.max_jobs}"
    if info.recycle == Recycle.MAX_MEMORY:
        return f"resident memory above max_memory {config.max_memory} MiB"
    if child.recycle_at is not None and now >= child.recycle_at:
        return f"{now - child.started:.0f} s old, max_age {config.max_age:g} s"
    return None


def kill_verdict(child: Child, info: SlotInfo, config: Config, now: float) -> tuple[str, str] | None:
    """(why, what to log) when CHILD must be killed now: too slow to stop,
    hung, or past its time limit and kill_grace."""
    doing = f"busy with task {info.task} job {info.job_handle}" if info.state == ChildState.BUSY else "idle"
    if child.stop_deadline is not None and now >= child.stop_deadline:
        return KILLED_STOP, (f"child {child.pid} did not stop within graceful_timeout {config.graceful_timeout:g} s "
                             f"({doing}); killing it")
    if silent(info, config, now):
        return KILLED_HUNG, f"child {child.pid} is hung: no heartbeat for {now - info.heartbeat:.1f} s ({doing}); " \
                            "killing it"
    if child.cancel_deadline is not None and now >= child.cancel_deadline and info.state == ChildState.BUSY \
            and info.job_handle == child.cancelling:
        return KILLED_CANCEL, (f"child {child.pid} did not give up cancelled job {info.job_handle} (task "
                               f"{info.task}) within kill_grace {config.kill_grace:g} s; killing it")
    if info.state == ChildState.BUSY and info.deadline and now > info.deadline + config.kill_grace:
        return KILLED_TIMEOUT, (f"child {child.pid} ran task {info.task} job {info.job_handle} past its time limit "
                                f"of {info.deadline - info.busy_since:g} s and did not give up within kill_grace "
                                f"{config.kill_grace:g} s; killing it")
    return None


def due_times(child: Child, info: SlotInfo, kill_grace: float) -> list[float]:
    """When something about CHILD falls due: its stop deadline, its
    recycling age, its time limit's kill."""
    if child.killed_because is not None:
        return []
    due = [info.deadline + kill_grace] if info.deadline else []
    if info.deadline and child.unblocked_job != info.busy_since:
        due.append(info.deadline + UNBLOCK_AFTER)
    if child.stop_deadline is not None:
        due.append(child.stop_deadline)
    if child.cancel_deadline is not None and info.state == ChildState.BUSY and info.job_handle == child.cancelling:
        due.append(child.cancel_deadline)
    if child.recycle_at is not None and child.replacing_because is None:
        due.append(child.recycle_at)
    return due


def unblock_signal(child: Child, info: SlotInfo, now: float) -> int | None:
    """The signal to send CHILD, once per job still running UNBLOCK_AFTER
    past its time limit, so that task code that blocked SIGALRM gets its
    soft limit anyway (see timelimit.py); None: nothing to send."""
    if info.state != ChildState.BUSY or not info.deadline or now < info.deadline + UNBLOCK_AFTER \
            or child.unblocked_job == info.busy_since:
        return None
    child.unblocked_job = info.busy_since
    return UNBLOCK_SIGNAL


def long_job_warning(child: Child, info: SlotInfo, limit: float, now: float) -> str | None:
    """Once per job, past long_job_warning: a job without a time limit gives no other sign."""
    if info.state != ChildState.BUSY or not limit or now - info.busy_since <= limit \
            or child.warned_long_job == info.job_handle:
        return None
    child.warned_long_job = info.job_handle
    return (f"child {child.pid} has been busy with task {info.task} job {info.job_handle} for "
            f"{now - info.busy_since:.0f} s (long_job_warning {limit:g} s)")


def silent(info: SlotInfo, config: Config, now: float) -> bool:
    """No heartbeat for heartbeat_timeout. A child busy with a task that
    has a time limit does not beat (see child.py): its deadline watches it."""
    if not config.heartbeat_timeout or (info.state == ChildState.BUSY and info.deadline):
        return False
    return now - info.heartbeat > config.heartbeat_timeout


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def exit_reason(child: Child, status: int, stopping: bool) -> str:
    """Why CHILD left, one of EXIT_REASONS."""
    if child.killed_because == KILLED_TIMEOUT:
        return "timeout"
    if child.killed_because == KILLED_HUNG:
        return "hung"
    if child.killed_because == KILLED_CANCEL:
        return "cancelled"
    if child.stop_deadline is not None or stopping:  # asked to leave (and maybe killed for being slow)
        return "recycled" if child.replacing_because else "stopped"
    return "killed" if os.waitstatus_to_exitcode(status) == -signal.SIGKILL else "crash"


class SlotBackoffs:
    """Crash back-off per slot: a slot whose children keep crashing waits
    longer each time; its crashes never delay another slot."""

    def __init__(self) -> None:
        self._backoff: dict[int, Backoff] = {}
        self._not_before: dict[int, float] = {}

    def after_death(self, slot: int, registered_once: bool, reason: str, lived: float,
                    now: float) -> tuple[float, int] | None:
        """A child of SLOT died by itself: None when its successor starts at
        once (it had registered, and was no crash loop), else (seconds the
        slot now waits, crashes in a row)."""
        if registered_once and not (reason == "crash" and lived < CRASH_LOOP_LIFETIME):
            self._backoff.pop(slot, None)
            return None
        backoff = self._backoff.setdefault(slot, Backoff(CRASH_BACKOFF_FIRST, CRASH_BACKOFF_MAX,
                                                         immediate_first=True))
        delay = backoff.next()
        self._not_before[slot] = now + delay
        return delay, backoff.failures

    def ready(self, slot: int, now: float) -> bool:
        if now < self._not_before.get(slot, 0.0):
            return False
        self._not_before.pop(slot, None)
        return True

    @property
    def waiting(self) -> dict[int, float]:
        """Slot -> when it may spawn again, for the slots backing off."""
        return dict(self._not_before)

    def due(self, now: float) -> list[float]:
        """When waiting slots may spawn again. A back-off that ended without
        a spawn (the slot is no longer wanted) is forgotten: counted, it
        would make the master's wait zero forever."""
        self._not_before = {slot: t for slot, t in self._not_before.items() if t > now}
        return list(self._not_before.values())
