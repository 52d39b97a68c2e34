"""gearman-workers: a supervised pre-fork pool of Python Gearman workers."""

__version__ = "0.2.0"

from .jobs.policy import Permanent

__all__ = ["Permanent", "__version__"]
