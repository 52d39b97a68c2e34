"""Example tasks. A task is f(worker, job) -> bytes | str | None."""

from __future__ import annotations

import logging
import os
import time

from gearman_workers import runtime

log = logging.getLogger("tasks")

# Built once in the master by the preload hook and shared with every child.
SHARED: dict[str, object] = {}


def preload() -> None:
    """Load what every child needs before the fork (models, lookup tables...)."""
    SHARED["greeting"] = "hello from the master"
    SHARED["loaded_by"] = os.getpid()


def echo(worker, job):
    return job.data


def reverse(worker, job):
    """Reverses UTF-8 text (a payload that is not UTF-8 fails the job)."""
    return job.data.decode("utf-8")[::-1]


def slow(worker, job):
    """Sleeps for job.data seconds (a number; default 1), reporting progress."""
    seconds = float(job.data or 1)
    steps = max(1, int(seconds * 10))
    for step in range(steps):
        time.sleep(seconds / steps)
        worker.send_job_status(job, step + 1, steps)
    return f"slept {seconds:g}s in pid {os.getpid()}"


def fail(worker, job):
    raise RuntimeError(f"asked to fail with {job.data!r}")


def setting(worker, job):
    """Returns the live runtime value named by job.data (see gm-ctl set)."""
    value = runtime.get(job.data.decode(), None)
    return f"{os.getpid()} {value!r}" if value is not None else f"{os.getpid()} unset"


def whoami(worker, job):
    return f"{os.getpid()} {SHARED.get('greeting', '-')}"


def tally(worker, job):
    """Logs that it ran job.data: for background jobs, whose answer nobody
    reads, the log is the record of what ran (and how often)."""
    log.info("tally %s", job.data.decode(errors="replace"))
    return job.data
