"""The tasks a child offers gearmand. A child starts by offering every task
its row (switchboard.py) does not withhold; when the master changes the
row, the child sends CANT_DO for what it now withholds and CAN_DO for what
it offers again, on the connections it has, without reconnecting: gearmand
then stops (or starts again) handing it those jobs. A job already in hand
finishes."""

from __future__ import annotations

from .. import protocol as p
from .switchboard import Row

NOTHING = frozenset[str]()


class Offers:
    def __init__(self, tasks: list[str], row: Row | None) -> None:
        self.tasks, self.row = tasks, row
        self.seen = -1  # the row's version last read
        self.withheld = NOTHING
        self.refresh()

    def refresh(self) -> tuple[frozenset[str], frozenset[str]]:
        """Read the row if it changed: (tasks now withheld, tasks offered again)."""
        if self.row is None:
            return NOTHING, NOTHING
        version = self.row.version()
        if version == self.seen:
            return NOTHING, NOTHING
        self.seen = version
        now = self.row.withheld()
        gone, back = now - self.withheld, self.withheld - now
        self.withheld = now
        return gone, back

    def can_do(self) -> bytes:
        """The CAN_DOs of a fresh connection."""
        return b"".join(p.request(p.CAN_DO, task.encode()) for task in self.tasks if task not in self.withheld)

    @staticmethod
    def changes(gone: frozenset[str], back: frozenset[str]) -> bytes:
        """What tells gearmand of a change, on a connection that has our CAN_DOs."""
        return b"".join([*(p.request(p.CANT_DO, task.encode()) for task in sorted(gone)),
                         *(p.request(p.CAN_DO, task.encode()) for task in sorted(back))])
