"""What a cancelled job's task sees."""

from __future__ import annotations


class JobCancelled(BaseException):
    """An operator cancelled the job (gm-ctl cancel). Raised inside the task,
    like JobTimeout: `finally` blocks and `with` exits run; a BaseException,
    so that `except Exception` does not swallow it by accident. The job is
    not run again, not even by a task with retries."""


def cancel_message(handle: str) -> str:
    return f"job {handle} cancelled by an operator (gm-ctl cancel); not run again"
