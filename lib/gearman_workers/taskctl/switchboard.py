"""What each child offers gearmand, and which job it must give up: shared
memory that the master writes and its children read, made before the first
fork (like the scoreboard, scoreboard.py).

One row per slot: a version word, the handle of a job to cancel, and one
byte per task: 0 while the child offers the task, else the reasons it
withholds it (bits: PAUSED, NO_TOKEN, NO_PERMIT). The master writes a row,
bumps its version, then sends the child OFFERS_SIGNAL; the child reads its
row when the signal comes (and when it starts), never on the job path.

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
PAUSED, NO_TOKEN, NO_PERMIT = 1, 2, 4
REASONS = {PAUSED: "paused", NO_TOKEN: "waiting for a concurrency token", NO_PERMIT: "waiting for its start rate"}

_VERSION = struct.Struct("<Q")
_CANCEL_AT = _VERSION.size
_TASKS_AT = _CANCEL_AT + HANDLE_FIELD
_ROW = _TASKS_AT + MAX_TASKS


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

    def reader(self, slot: int, tasks: list[str]) -> Row:
        return Row(self._mem, slot * _ROW, {task: self.index[task] for task in tasks if task in self.index})


class Row:
    """One child's row, as the child reads it."""

    __slots__ = ("_mem", "_offset", "_tasks")

    def __init__(self, mem: mmap.mmap, offset: int, tasks: dict[str, int]) -> None:
        self._mem, self._offset, self._tasks = mem, offset, tasks

    def version(self) -> int:
        return _VERSION.unpack_from(self._mem, self._offset)[0]

    def withheld(self) -> frozenset[str]:
        base = self._offset + _TASKS_AT
        return frozenset(task for task, at in self._tasks.items() if self._mem[base + at])

    def cancel_handle(self) -> bytes:
        start = self._offset + _CANCEL_AT
        return self._mem[start:start + HANDLE_FIELD].rstrip(b"\0")
