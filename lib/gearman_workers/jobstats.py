"""Job counts per task, in shared memory: children count, the master adds up.

Every child slot has one row per task: how many jobs ended in each outcome,
how many took each bucket of time, and their total time. A child adds to its
own rows after each job with plain memory writes (no lock, no system call,
nothing the master can block on). The master reads the rows of its living
children for the metrics, and before a slot is given to a new child it adds
the dead child's rows to totals of its own: a count never goes down, not
even when the child that made it was killed.

Task names get a row number from the master, in order of first sight;
numbers are never reused, so a reload that drops a task keeps its counts.
Past MAX_TASKS names, the rest share the last row, shown as OTHER.
"""

from __future__ import annotations

import bisect
import dataclasses
import mmap
import threading
from collections.abc import Iterable

OUTCOMES = ("done", "failed", "timeout", "poison", "cancelled")
DONE, FAILED, TIMEOUT, POISON, CANCELLED = range(len(OUTCOMES))
# Upper bounds (seconds) of the duration buckets; one more bucket for the rest.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_TASKS = 64
OTHER = "(other tasks)"
_ROW = len(OUTCOMES) + len(BUCKETS) + 1  # counts per row: outcomes, then buckets
_FIRST_BUCKET = len(OUTCOMES)
FASTEST = BUCKETS[0]  # most jobs fall in the first bucket: no search for them


@dataclasses.dataclass
class TaskTotals:
    """What one task's jobs added up to, over every child so far."""

    task: str
    outcomes: dict[str, int]
    buckets: list[int]  # per bucket, not cumulative; the last is above BUCKETS[-1]
    seconds: float


class JobStats:
    """The shared rows. Made before the first fork; sized for every slot."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._counts_mem = mmap.mmap(-1, slots * MAX_TASKS * _ROW * 8)
        self._seconds_mem = mmap.mmap(-1, slots * MAX_TASKS * 8)
        self._counts = memoryview(self._counts_mem).cast("Q")
        self._seconds = memoryview(self._seconds_mem).cast("d")
        self._rows: dict[str, int] = {}
        self._retired_counts = [0] * (MAX_TASKS * _ROW)
        self._retired_seconds = [0.0] * MAX_TASKS
        # Between the main loop's retire() and the metrics thread's totals():
        # a dead child's counts are in its rows or in the totals, never both.
        self._lock = threading.Lock()

    # --- the master --------------------------------------------------------

    def add_tasks(self, names: Iterable[str]) -> None:
        """Give NAMES their rows (before forking children that run them)."""
        for name in names:
            if name not in self._rows:
                self._rows[name] = min(len(self._rows), MAX_TASKS - 1)

    def rows(self) -> dict[str, int]:
        return dict(self._rows)

    def retire(self, slot: int) -> None:
        """SLOT's child is gone: keep its counts, and zero its rows for the next."""
        counts, seconds = self._slot_counts(slot), self._slot_seconds(slot)
        with self._lock:
            _add(self._retired_counts, counts.tolist())
            _add(self._retired_seconds, seconds.tolist())
            counts[:] = memoryview(bytes(len(counts) * 8)).cast("Q")
            seconds[:] = memoryview(bytes(len(seconds) * 8)).cast("d")

    def totals(self, slots_in_use: int) -> list[TaskTotals]:
        """Every task's totals: the dead children's, and the rows of the
        first SLOTS_IN_USE slots (a free slot's rows are zero)."""
        with self._lock:
            counts, seconds = list(self._retired_counts), list(self._retired_seconds)
            for slot in range(slots_in_use):
                _add(counts, self._slot_counts(slot).tolist())
                _add(seconds, self._slot_seconds(slot).tolist())
        names: dict[int, str] = {}
        for name, row in self._rows.items():
            names[row] = OTHER if row == MAX_TASKS - 1 and len(self._rows) > MAX_TASKS else name
        return [_row_totals(name, counts[row * _ROW:(row + 1) * _ROW], seconds[row])
                for row, name in sorted(names.items())]

    def _slot_counts(self, slot: int) -> memoryview[int]:
        size = MAX_TASKS * _ROW
        return self._counts[slot * size:(slot + 1) * size]

    def _slot_seconds(self, slot: int) -> memoryview[float]:
        return self._seconds[slot * MAX_TASKS:(slot + 1) * MAX_TASKS]

    # --- a child -------------------------------------------------------------

    def counter(self, slot: int) -> JobCounter:
        return JobCounter(self._counts, self._seconds, slot, self.rows())


def _add(into: list, values: list) -> None:
    for i, value in enumerate(values):
        if value:
            into[i] += value


def _row_totals(name: str, row: list[int], seconds: float) -> TaskTotals:
    outcomes = dict(zip(OUTCOMES, row[:len(OUTCOMES)], strict=True))
    return TaskTotals(name, outcomes, row[len(OUTCOMES):], seconds)


class JobCounter:
    """A child's side: one call per job, plain integer adds into its rows."""

    __slots__ = ("_counts", "_rows", "_seconds")

    def __init__(self, counts: memoryview[int], seconds: memoryview[float], slot: int,
                 rows: dict[str, int]) -> None:
        self._counts, self._seconds = counts, seconds
        # Per task: where its row of counts and its seconds are.
        self._rows = {name.encode(): (slot * MAX_TASKS * _ROW + row * _ROW, slot * MAX_TASKS + row)
                      for name, row in rows.items()}

    def count(self, task: bytes, outcome: int, seconds: float) -> None:
        counts_at, seconds_at = self._rows[task]
        self._counts[counts_at + outcome] += 1
        if outcome != POISON:  # not run: no duration
            bucket = 0 if seconds <= FASTEST else bisect.bisect_left(BUCKETS, seconds)
            self._counts[counts_at + _FIRST_BUCKET + bucket] += 1
            self._seconds[seconds_at] += seconds
