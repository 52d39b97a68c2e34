"""The job a task receives, and how a task's return value becomes a result."""

from __future__ import annotations

from typing import Any


class TaskResultError(TypeError):
    """A task returned something that cannot be sent back to the client."""


class Job:
    """One job from gearmand, as python-gearman tasks know it.

    ``data`` is the payload as bytes; ``handle``, ``task`` and ``unique``
    are text (the handle and unique are decoded when a task asks: most
    never do). ``connection`` is the session it came on (for status updates).
    """

    __slots__ = ("_handle", "_unique", "connection", "data", "task")

    def __init__(self, handle: bytes | str, task: str, unique: bytes | str, data: bytes, connection: Any = None):
        self._handle = handle
        self.task = task
        self._unique = unique
        self.data = data
        self.connection = connection

    @property
    def handle(self) -> str:
        handle = self._handle
        return handle if isinstance(handle, str) else handle.decode("utf-8", "replace")

    @property
    def unique(self) -> str:
        unique = self._unique
        return unique if isinstance(unique, str) else unique.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Job {self.task} handle={self.handle} unique={self.unique!r} {len(self.data)} bytes>"


def encode_result(value: Any) -> bytes:
    """bytes as is, str as UTF-8, None as empty; anything else is an error."""
    if type(value) is bytes:
        return value
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TaskResultError(
        f"task returned {type(value).__name__}; a task must return bytes, str or None"
    )
