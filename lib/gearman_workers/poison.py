"""Poison jobs: jobs whose runs kill the children that run them.

gearmand hands the job of a dead worker to the next one, without limit by
default, so one such job can take a whole pool down. Both halves live here:

- the master's ``PoisonLedger`` counts, per job, the children that died
  while running it (crashed, were killed from outside, or were killed by
  the master for a time limit or a missing heartbeat) and publishes the
  table in the scoreboard;
- a child's ``PoisonCheck``, before it runs a job, adds the ledger's count
  to the children that still show the job as theirs although they are dead
  and not yet reaped (gearmand can hand the job out again before the master
  has noticed the death). At ``poison_kills`` the job is failed, not run.
"""

from __future__ import annotations

import collections

from .scoreboard import POISON_ENTRIES, POISON_VERSION, Poisoned, Scoreboard


class PoisonLedger:
    """The master's count of children killed per job (most recent kept)."""

    def __init__(self, capacity: int = POISON_ENTRIES) -> None:
        self.capacity = capacity
        self._jobs: collections.OrderedDict[tuple[int, bytes], Poisoned] = collections.OrderedDict()

    def record(self, server: int, handle: bytes, pid: int, why: str) -> Poisoned:
        old = self._jobs.pop((server, handle), None)
        entry = Poisoned(server, handle, (old.kills if old else 0) + 1, pid, why)
        self._jobs[server, handle] = entry
        while len(self._jobs) > self.capacity:
            self._jobs.popitem(last=False)
        return entry

    def entries(self) -> list[Poisoned]:
        """Most recent first."""
        return list(reversed(self._jobs.values()))


NO_KILLS = (0, "")
# Why the master killed a child that ran past its time limit plus
# kill_grace: a job that died so is answered JobTimeout and never run again.
TIME_LIMIT_EXCEEDED = "time limit exceeded"
KILLED_FOR_TIME = f"killed ({TIME_LIMIT_EXCEEDED})"
# Why the master killed a child that did not give up a cancelled job
# within kill_grace: a job that died so is answered JobCancelled, never run.
CANCELLED = "cancelled"
KILLED_FOR_CANCEL = f"killed ({CANCELLED})"


class PoisonCheck:
    """A child's view: how many children has this job killed so far?

    Asked before every job, and the answer is almost always none: so
    ``clear()`` costs one comparison of the table's version, one set lookup
    while the table holds anything, and one search in C of the slots'
    handles (a child that died holding the job and is not yet reaped
    still names it there). Only a job that is found somewhere goes on to
    ``kills()``."""

    def __init__(self, board: Scoreboard) -> None:
        self.board = board
        self._words = board.words
        self._version = -1
        self._table: dict[tuple[int, bytes], Poisoned] = {}
        self._handles: frozenset[bytes] = frozenset()

    def clear(self, handle: bytes) -> bool:
        """True when no child is known to have died running job HANDLE
        (on any server): the job runs without further ado."""
        # The slots first, then the table: the master records a death
        # before it clears the dead child's slot, so one of them shows it.
        if self.board.may_name_job(handle):
            return False
        if self._words[POISON_VERSION] != self._version:
            self._reload()
        return not self._handles or handle not in self._handles

    def kills(self, server: int, handle: bytes) -> tuple[int, str]:
        """(children killed, why the last one died) for job HANDLE of SERVER."""
        unreaped = self.board.busy_with(server, handle)
        if self._words[POISON_VERSION] != self._version:
            self._reload()
        entry = self._table.get((server, handle))
        if entry is None:
            return (len(unreaped), "died while running it") if unreaped else NO_KILLS
        # The last recorded death may still show in its slot: count it once.
        extra = [pid for pid in unreaped if pid != entry.last_pid]
        return entry.kills + len(extra), entry.why

    def _reload(self) -> None:
        self._version = self._words[POISON_VERSION]  # first: a table published meanwhile is read next time
        self._table = self.board.poisoned()
        self._handles = frozenset(handle for _, handle in self._table)
