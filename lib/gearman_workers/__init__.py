"""gearman-workers: a supervised pre-fork pool of Python Gearman workers."""

__version__ = "0.1.0"
