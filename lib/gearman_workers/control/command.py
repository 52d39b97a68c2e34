"""What a control command is: the protocol each command module implements
(exit.py, data.py, scale.py), and what the pool side offers them.

A command says five things, each in one place: what it requires of a
message (`check`), where an operator's message is kept in Redis besides
being published (`record`, and `recorded` reads what is there), what an
accepted message makes the pool do or why the pool refuses it (`apply`),
and how it reads in the pool's log (`describe`). registry.py
maps the names to them; the listener and the operator CLI dispatch only
through it."""

from __future__ import annotations

from typing import Any, Protocol

from ..commands import Command as MasterCommand
from .messages import Message
from .store import Keys


class Pool(Protocol):
    """The pool's side of the channel, as a command sees it (listener.py)."""

    def submit(self, command: MasterCommand) -> None:
        """Hand the master a command of its own (commands.py)."""

    def reload_data(self) -> None:
        """Read the stored runtime data again and publish what changed."""

    def autoscales(self) -> bool:
        """The pool sizes itself on gearmand's queue (its bounds are its configuration's)."""

    def job_store(self) -> Any:
        """The job records (jobs/store.JobStore) on the listener's connection."""

    def reload_pauses(self) -> frozenset[str]:
        """Read the stored pauses again, apply them; the tasks paused here now."""

    def serves(self, task: str) -> bool:
        """TASK is one of this pool's tasks."""

    def running_job(self, handle: str | None, unique: bytes | None) -> Any:
        """The child running the job (views.RunningJob), or None."""

    def cancel_queued(self, handle: str) -> list[str]:
        """Ask this pool's gearmands to drop queued job HANDLE: the ones that did."""


class ControlCommand(Protocol):
    name: str

    def check(self, message: Message) -> None:
        """Raise BadMessage when MESSAGE lacks what this command needs."""

    def record(self, pipe: Any, keys: Keys, scope: str, message: Message, raw: bytes) -> None:
        """Queue on PIPE what keeps MESSAGE (RAW: as signed) for pools that
        are not listening now; nothing for a command that is not kept."""

    def recorded(self, client: Any, keys: Keys, scope: str, message: Message) -> bytes | None:
        """What record() would replace for MESSAGE in SCOPE (None: nothing)."""

    def restore(self, client: Any, keys: Keys, scope: str, message: Message, raw: bytes | None) -> None:
        """Put back RAW, what recorded() said was there before MESSAGE (None: remove MESSAGE's)."""

    def apply(self, pool: Pool, message: Message) -> str | None:
        """What a pool does with an accepted MESSAGE aimed at it; BadMessage
        (with its reason) when this pool refuses it. Its answer (acks.py)
        says which, with the text returned (None: nothing to add)."""

    def describe(self, message: Message) -> str:
        """The command as the pool's log names it."""
