"""What each child offers gearmand, and which job it must give up: shared
memory that the master writes and its children read, made before the first
fork (like the scoreboard, scoreboard.py).

One row per slot: a version word, the handle of a job to cancel, one byte
per task: 0 while the child may offer the task, else the reasons it
withholds it (bits: PAUSED, NO_TOKEN), and per task two counters of start
permits (a task with a `rate`): how many the master granted the child, and
how many the child used. A child offers such a task only while it holds a
permit it has not used. The master writes a row, bumps its version, then
sends the child OFFERS_SIGNAL; the child reads its row when the signal
comes (and when it starts), never on the job path. The used counters are
the one thing a child writes here: the master reads them.

Tasks get a byte from the master in order of first sight (a reload may add
tasks); past MAX_TASKS, a task cannot be withheld and is always offered.
"""

from __future__ import annotations

import mmap
import signal
import struct

# The master's word to a child: "read your row". A real-time signal that
# no library gives a meaning (UNBLOCK_SIGNAL, timelimit.py, is +2).
OFFERS_SIGNAL = signal.SIGRTMIN + 3
MAX_TASKS = 256
HANDLE_FIELD = 64
PAUSED, NO_TOKEN = 1, 2

_VERSION = struct.Struct("<Q")
_COUNT = struct.Struct("<H")  # permits granted or used, modulo 65536: only their difference counts
_CANCEL_AT = _VERSION.size
_TASKS_AT = _CANCEL_AT + HANDLE_FIELD
_GRANTED_AT = _TASKS_AT + MAX_TASKS
_USED_AT = _GRANTED_AT + MAX_TASKS * _COUNT.size
_ROW = _USED_AT + MAX_TASKS * _COUNT.size


class Switchboard:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * _ROW)
        self.index: dict[str, int] = {}  # task -> its byte in every row

    def task_index(self, task: str) -> int | None:
        """TASK's byte, given on first sight; None once every byte is taken."""
        at = self.index.get(task)
        if at is None and len(self.index) < MAX_TASKS:
            at = self.index[task] = len(self.index)
        return at

    # --- the master's side ------------------------------------------------

    def reset(self, slot: int) -> None:
        """Before a fork: the slot's row belongs to a child being born."""
        self._mem[slot * _ROW:(slot + 1) * _ROW] = bytes(_ROW)

    def withhold(self, slot: int, task: str, reason: int, on: bool) -> bool:
        """Set or clear REASON for TASK in SLOT's row: True if the row changed."""
        at = self.task_index(task)
        if at is None:
            return False
        offset = slot * _ROW + _TASKS_AT + at
        before = self._mem[offset]
        after = before | reason if on else before & ~reason
        self._mem[offset] = after
        return after != before

    def grant_permit(self, slot: int, task: str) -> None:
        at = self.task_index(task)
        if at is not None:
            offset = slot * _ROW + _GRANTED_AT + at * _COUNT.size
            _COUNT.pack_into(self._mem, offset, (_COUNT.unpack_from(self._mem, offset)[0] + 1) & 0xFFFF)

    def unused_permit(self, slot: int, task: str) -> bool:
        """The child in SLOT holds a start permit for TASK that it has not used."""
        at = self.index.get(task)
        return at is not None and _unused(self._mem, slot * _ROW, at)

    def reasons(self, slot: int, task: str) -> int:
        at = self.index.get(task)
        return 0 if at is None else self._mem[slot * _ROW + _TASKS_AT + at]

    def ask_cancel(self, slot: int, handle: bytes) -> None:
        start = slot * _ROW + _CANCEL_AT
        self._mem[start:start + HANDLE_FIELD] = handle[:HANDLE_FIELD].ljust(HANDLE_FIELD, b"\0")

    def publish(self, slot: int) -> None:
        """After the row is written: a child that sees the new version sees the row."""
        (version,) = _VERSION.unpack_from(self._mem, slot * _ROW)
        _VERSION.pack_into(self._mem, slot * _ROW, version + 1)

    # --- the child's side ---------------------------------------------------

    def reader(self, slot: int, tasks: list[str], metered: frozenset[str] = frozenset()) -> Row:
        """SLOT's row, for a child of TASKS (METERED: those with a rate)."""
        return Row(self._mem, slot * _ROW, {task: self.index[task] for task in tasks if task in self.index},
                   metered)


def _unused(mem: mmap.mmap, row: int, at: int) -> bool:
    granted = _COUNT.unpack_from(mem, row + _GRANTED_AT + at * _COUNT.size)[0]
    used = _COUNT.unpack_from(mem, row + _USED_AT + at * _COUNT.size)[0]
    return granted != used


class Row:
    """One child's row, as the child reads it."""

    __slots__ = ("_mem", "_offset", "_tasks", "metered")

    def __init__(self, mem: mmap.mmap, offset: int, tasks: dict[str, int], metered: frozenset[str]) -> None:
        self._mem, self._offset, self._tasks = mem, offset, tasks
        self.metered = metered & set(tasks)

    def version(self) -> int:
        return _VERSION.unpack_from(self._mem, self._offset)[0]

    def withheld(self) -> frozenset[str]:
        """The tasks not to offer now: withheld for a reason, or metered without an unused permit."""
        base, mem = self._offset + _TASKS_AT, self._mem
        return frozenset(task for task, at in self._tasks.items()
                         if mem[base + at] or (task in self.metered and not _unused(mem, self._offset, at)))

    def use_permit(self, task: str) -> None:
        """A job of metered TASK starts: its permit is spent."""
        offset = self._offset + _USED_AT + self._tasks[task] * _COUNT.size
        _COUNT.pack_into(self._mem, offset, (_COUNT.unpack_from(self._mem, offset)[0] + 1) & 0xFFFF)

    def cancel_handle(self) -> bytes:
        start = self._offset + _CANCEL_AT
        return self._mem[start:start + HANDLE_FIELD].rstrip(b"\0")
