"""The job a task receives, and how a task's return value becomes a result."""

from __future__ import annotations

from typing import Any


class TaskResultError(TypeError):
    """A task returned something that cannot be sent back to the client."""


class Job:
    """One job from gearmand, as python-gearman tasks know it.

    ``data`` is the payload as bytes; ``handle``, ``task`` and ``unique``
    are text. ``connection`` is the session it came on (for status updates).
    """

    __slots__ = ("connection", "data", "handle", "task", "unique")

    def __init__(self, handle: str, task: str, unique: str, data: bytes, connection: Any = None):
        self.handle = handle
        self.task = task
        self.unique = unique
        self.data = data
        self.connection = connection

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
