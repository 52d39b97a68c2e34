"""Logging set-up shared by the master and its children."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_role = "master"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def set_role(role: str) -> None:
    """Name this process in every later log line ('master', 'child 3')."""
    global _role
    _role = role


def setup(level: str, log_file: Path | None = None, timestamps: bool = True) -> None:
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    stamp = "%(asctime)s " if timestamps else ""
    handler.setFormatter(logging.Formatter(
        f"{stamp}%(levelname)s %(name)s %(role)s[%(process)d]: %(message)s"))
    handler.addFilter(_RoleFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
