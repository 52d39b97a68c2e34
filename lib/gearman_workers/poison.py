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

from .scoreboard import POISON_ENTRIES, Poisoned, Scoreboard


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


class PoisonCheck:
    """A child's view: how many children has this job killed so far?"""

    def __init__(self, board: Scoreboard) -> None:
        self.board = board
        self._version = -1
        self._used = 0  # slots in use when last read; the count only grows
        self._table: dict[tuple[int, bytes], Poisoned] = {}

    def kills(self, server: int, handle: bytes) -> tuple[int, str]:
        """(children killed, why the last one died) for job HANDLE."""
        # Slots first, then the table: the master records a death before it
        # clears the dead child's slot, so one of the two reads sees it.
        # Slots opened since the last look are scanned, then looked again.
        unreaped = self.board.busy_with(server, handle, 0, self._used)
        _, version, used = self.board.header()
        while used != self._used:  # rare: slots opened since the last look
            unreaped += self.board.busy_with(server, handle, self._used, used)
            self._used = used
            _, version, used = self.board.header()
        if version != self._version:
            self._table, self._version = self.board.poisoned(), version
        entry = self._table.get((server, handle))
        if entry is None:
            return (len(unreaped), "died while running it") if unreaped else NO_KILLS
        # The last recorded death may still show in its slot: count it once.
        extra = [pid for pid in unreaped if pid != entry.last_pid]
        return entry.kills + len(extra), entry.why
