"""Delayed jobs for applications: ``gearman_workers.schedule.submit_later``
(how they are kept and submitted: jobs/later.py)."""

from .jobs.later import BadDelayedJob, submit_later

__all__ = ["BadDelayedJob", "submit_later"]
