"""The master's side of task control: which child withholds which task, and
why. It writes the children's rows (switchboard.py); the master signals the
children whose rows changed. Called from the master's loop (children born
and gone, pause and cancel commands) and from the governor's thread
(tokens), hence the lock."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from ..config import Config
from .switchboard import NO_TOKEN, PAUSED, Switchboard

PAUSE_SETTLED = 0.5  # seconds after a pause when its children no longer hold the task's tokens


@dataclasses.dataclass
class Seat:
    """A slot's child, as task control sees it."""

    tasks: list[str]
    pid: int = 0  # 0: not forked yet
    leaving: bool = False  # asked to stop: it wants no token


class Steering:
    def __init__(self, config: Config, slots: int) -> None:
        self.board = Switchboard(slots)
        self.paused: frozenset[str] = frozenset()
        self.paused_since: dict[str, float] = {}  # task -> when it was paused (monotonic)
        self.seats: dict[int, Seat] = {}
        self.lock = threading.Lock()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """The governed tasks (at start, and after a reload)."""
        with self.lock:
            self.limited = {name: spec.concurrency for name, spec in config.tasks.items() if spec.concurrency}
            self.rated = {name: spec.starts_per_second for name, spec in config.tasks.items() if spec.rate}
            for name in config.tasks:
                self.board.task_index(name)

    def governed(self) -> bool:
        """Some task has a concurrency or a rate (the governor has work)."""
        return bool(self.limited or self.rated)

    # --- children ---------------------------------------------------------------

    def prepare(self, slot: int, tasks: list[str]) -> None:
        """Before SLOT's child is forked: its row withholds the paused tasks
        and those it has no token for yet."""
        with self.lock:
            self.board.reset(slot)
            self.seats[slot] = Seat(tasks)
            for task in tasks:  # (a task with a rate: no permit yet, see switchboard.py)
                self.board.withhold(slot, task, PAUSED, task in self.paused)
                self.board.withhold(slot, task, NO_TOKEN, task in self.limited)

    def born(self, slot: int, pid: int) -> None:
        with self.lock:
            self.seats[slot].pid = pid

    def leaving(self, slot: int) -> None:
        with self.lock:
            seat = self.seats.get(slot)
            if seat is not None:
                seat.leaving = True

    def gone(self, slot: int) -> None:
        with self.lock:
            self.seats.pop(slot, None)

    # --- what the governor and the commands change ------------------------------

    def pause(self, paused: frozenset[str]) -> list[int]:
        """The paused tasks are now PAUSED: the slots whose rows changed."""
        with self.lock:
            now = time.monotonic()
            self.paused_since = {task: self.paused_since.get(task, now) for task in paused}
            self.paused = paused
            return self._set_all(PAUSED, lambda task: task in paused)

    def grant(self, task: str, slots: set[int]) -> list[int]:
        """Of the children serving TASK, SLOTS hold a token, the others none."""
        with self.lock:
            return [slot for slot, seat in self.seats.items() if task in seat.tasks
                    and self._set(slot, task, NO_TOKEN, slot not in slots)]

    def grant_permit(self, slot: int, task: str) -> None:
        """The child in SLOT may start one job of TASK (its rate allows it)."""
        with self.lock:
            if slot in self.seats:
                self.board.grant_permit(slot, task)
                self.board.publish(slot)

    def needs_permit(self, slot: int, task: str) -> bool:
        with self.lock:
            return slot in self.seats and not self.board.unused_permit(slot, task)

    def ask_cancel(self, slot: int, handle: bytes) -> None:
        with self.lock:
            self.board.ask_cancel(slot, handle)
            self.board.publish(slot)

    def wanting(self, task: str) -> dict[int, tuple[int, bool]]:
        """Slot -> (PID, whether it stays) of the children serving TASK: a
        child stays unless it leaves, or TASK has been paused here for
        PAUSE_SETTLED (its CANT_DO has gone out by then: a token or permit
        given up sooner could meet a job that gearmand handed it just before)."""
        with self.lock:
            settled = task in self.paused and time.monotonic() - self.paused_since.get(task, 0.0) >= PAUSE_SETTLED
            return {slot: (seat.pid, not seat.leaving and not settled) for slot, seat in self.seats.items()
                    if task in seat.tasks and seat.pid}

    def withheld(self) -> dict[str, int]:
        """Task -> how many children withhold it now (the metric)."""
        with self.lock:
            counts: dict[str, int] = {}
            for slot, seat in self.seats.items():
                for task in seat.tasks:
                    if self.board.reasons(slot, task):
                        counts[task] = counts.get(task, 0) + 1
            return counts

    def _set_all(self, reason: int, on: Callable[[str], bool]) -> list[int]:
        changed = []
        for slot, seat in self.seats.items():
            if any([self.board.withhold(slot, task, reason, on(task)) for task in seat.tasks]):
                self.board.publish(slot)
                changed.append(slot)
        return changed

    def _set(self, slot: int, task: str, reason: int, on: bool) -> bool:
        if not self.board.withhold(slot, task, reason, on):
            return False
        self.board.publish(slot)
        return True


class Unsteered:
    """A pool without fleet control: no child withholds anything, nothing is cancelled."""

    board = None
    paused: frozenset[str] = frozenset()

    def prepare(self, slot: int, tasks: list[str]) -> None: ...
    def born(self, slot: int, pid: int) -> None: ...
    def leaving(self, slot: int) -> None: ...
    def gone(self, slot: int) -> None: ...
    def configure(self, config: Config) -> None: ...

    def pause(self, paused: frozenset[str]) -> list[int]:
        return []

    def ask_cancel(self, slot: int, handle: bytes) -> None: ...

    def withheld(self) -> dict[str, int]:
        return {}
