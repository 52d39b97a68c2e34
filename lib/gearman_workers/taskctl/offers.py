"""The tasks a child offers gearmand. A child starts by offering every task
its row (switchboard.py) does not withhold; when the master changes the
row, the child sends CANT_DO for what it now withholds and CAN_DO for what
it offers again, on the connections it has, without reconnecting: gearmand
then stops (or starts again) handing it those jobs. A job already in hand
finishes. A task with a rate is offered for one job per permit: the child
spends the permit as the job starts, and withdraws the task as it answers."""

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

    def spend(self, task: str) -> None:
        """A job of TASK, which has a rate, starts: its permit is spent (the
        master may grant the next one while the job runs)."""
        assert self.row is not None
        self.row.use_permit(task)

    def withdraw(self, task: str) -> bytes:
        """After the answer to a job of TASK: gearmand must offer us no more
        until the next permit. Not earlier: gearmand takes back a job whose
        task its worker withdraws while it holds the job."""
        self.withheld |= {task}
        return p.request(p.CANT_DO, task.encode())

    @staticmethod
    def changes(gone: frozenset[str], back: frozenset[str]) -> bytes:
        """What tells gearmand of a change, on a connection that has our CAN_DOs."""
        return b"".join([*(p.request(p.CANT_DO, task.encode()) for task in sorted(gone)),
                         *(p.request(p.CAN_DO, task.encode()) for task in sorted(back))])
