"""gearman-workers: a supervised pre-fork pool of Python Gearman workers."""

__version__ = "0.2.0"
