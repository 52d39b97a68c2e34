"""Tasks for bench/faults' retry scenarios: each run leaves a file of its
own in $GW_RETRY_RUNS (named by task, payload and a random part), so runs
are counted without two processes ever writing one file."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

RUNS = Path(os.environ.get("GW_RETRY_RUNS", "/nonexistent"))


def _runs_before(job) -> int:
    return len(list(RUNS.glob(f"{job.task}.{hashlib.sha1(job.data).hexdigest()}.*")))


def _note(job) -> None:
    (RUNS / f"{job.task}.{hashlib.sha1(job.data).hexdigest()}.{uuid.uuid4().hex}").touch()


def flaky(worker, job):
    """Fails the first two runs of each payload, then succeeds."""
    before = _runs_before(job)
    _note(job)
    if before < 2:
        raise RuntimeError(f"run {before + 1} fails")
    return job.data


def broken(worker, job):
    _note(job)
    raise RuntimeError("always fails")


def other(worker, job):
    """What the leader's pool serves in the leader-kill scenario: nothing of the retried task."""
    return job.data
