"""Reading a job's record from a client: ``gearman_workers.results.read``
(the record and its format: jobs/results.py)."""

from .jobs.results import read

__all__ = ["read"]
