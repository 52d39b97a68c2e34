"""Preload hooks that take one of the child's per-job protections away, so
that bench/protections can measure what each one costs. They patch the
pool's classes in the master before it forks: every child runs without
that protection. For measuring only; never for running jobs.

    bin/gearman-workers --python-path bench --preload protection_variants:without_poison_check ...
"""

from __future__ import annotations

from gearman_workers.poison import PoisonCheck
from gearman_workers.scoreboard import SlotWriter
from gearman_workers.titles import Title


def without_poison_check() -> None:
    """Every job runs as if no child had ever died holding it."""
    PoisonCheck.clear = lambda self, handle: True  # type: ignore[method-assign]


def without_slot_writes() -> None:
    """The master is not told which job a child holds, nor its deadline,
    nor anything after a child's first job (its registration still is)."""
    between_jobs = SlotWriter.between_jobs

    def before_the_first_job_only(self: SlotWriter, state: int, now: float) -> None:
        if not (self.jobs_done or self.jobs_failed):
            between_jobs(self, state, now)  # type: ignore[arg-type]

    SlotWriter.busy = lambda self, *job: None  # type: ignore[method-assign]  # whatever the job's fields
    SlotWriter.between_jobs = before_the_first_job_only  # type: ignore[method-assign]


def without_title() -> None:
    """No process title is compared or set."""
    Title.show = lambda self, doing="": None  # type: ignore[method-assign]


def without_any() -> None:
    without_poison_check()
    without_slot_writes()
    without_title()
