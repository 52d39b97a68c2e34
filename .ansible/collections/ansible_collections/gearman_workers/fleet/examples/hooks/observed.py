"""Tracing and error reporting together: the hooks of tracing.py, with
errors.py's report on each failure (one callable per hook, so the two
are called from here).

    [hooks]
    post_fork = "observed:post_fork"
    before_job = "observed:before_job"
    after_job = "observed:after_job"
    on_failure = "observed:on_failure"
    child_exit = "observed:child_exit"
"""

from __future__ import annotations

from typing import Any

import errors
import tracing
from tracing import after_job, before_job, child_exit

__all__ = ["after_job", "before_job", "child_exit", "on_failure", "post_fork"]


def post_fork(worker: Any) -> None:
    tracing.post_fork(worker)
    errors.post_fork(worker)


def on_failure(worker: Any, job: Any, exc: BaseException) -> None:
    tracing.on_failure(worker, job, exc)
    errors.on_failure(worker, job, exc)
