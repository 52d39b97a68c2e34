"""Process titles: what `ps`, `top` and `pgrep -f` show for each process.

    gearman-workers: master [POOL]
    gearman-workers: child 3 [POOL] busy resize
    gearman-workers: child 4 [POOL] mail only idle

The title changes only when what it says changes: a child that runs job
after job of one task keeps "busy TASK", so a stream of jobs costs nothing
here (setting a title is a system call and a copy).
"""

from __future__ import annotations

import setproctitle

PREFIX = "gearman-workers:"


class Title:
    def __init__(self, who: str) -> None:
        self.who = who
        self._doing: str | None = None

    def show(self, doing: str = "") -> None:
        if doing != self._doing:
            self._doing = doing
            setproctitle.setproctitle(f"{PREFIX} {self.who} {doing}".rstrip())


def master(pool: str) -> Title:
    return Title(f"master [{pool}]")


def child(slot: int, pool: str, dedicated_to: str | None = None) -> Title:
    """A shared child: `child 3 [POOL]`; one with a task of its own: `child 3 [POOL] TASK only`."""
    return Title(f"child {slot} [{pool}]" + (f" {dedicated_to} only" if dedicated_to else ""))
