"""Logging set-up shared by the master and its children.

Three shapes of line:
- text (the default): ``TIME LEVEL logger role[pid]: message``
- json: one object per line, for log shippers
- either of them, when stderr is the systemd journal: every line starts
  with its syslog priority (``<3>`` error ... ``<7>`` debug), which journald
  takes as the entry's priority (so ``journalctl -p err`` finds errors), and
  text lines carry no timestamp of their own (journald stamps each entry).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

_role = "master"

# syslog priorities (sd-daemon.h) of Python's levels
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def set_role(role: str) -> None:
    """Name this process in every later log line ('master', 'child 3')."""
    global _role
    _role = role


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device and inode of the stream it
    connected; a stderr redirected elsewhere since no longer matches."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


# Control characters in a message (a publisher's field name, a payload in
# an exception) must not start fake log lines or drive the operator's
# terminal: each is written as an escape instead.
_CONTROL = [*range(0x20), *range(0x7F, 0xA0)]
_ESCAPED = {code: f"\\x{code:02x}" for code in _CONTROL} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_ESCAPED_KEEPING_LINES = {code: text for code, text in _ESCAPED.items() if code != 0x0A}
_JSON_UNESCAPED = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}  # json.dumps escapes only < 0x20


def escape(text: str) -> str:
    return text.translate(_ESCAPED)


class TextFormatter(logging.Formatter):
    """One line per message; a traceback keeps its lines, but no other control character."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return super().formatException(ei).translate(_ESCAPED_KEEPING_LINES)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="microseconds")
        entry = {"time": stamp.replace("+00:00", "Z"), "level": record.levelname.lower(), "logger": record.name,
                 "role": getattr(record, "role", _role), "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False).translate(_JSON_UNESCAPED)


class JournalFormatter(logging.Formatter):
    """Wraps another formatter: the priority before every line, so that a
    traceback's lines keep the priority of the error they belong to."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def formatter(log_format: str = "text", journal: bool = False, timestamps: bool = True) -> logging.Formatter:
    if log_format == "json":
        shape: logging.Formatter = JsonFormatter()
    else:
        stamp = "%(asctime)s " if timestamps and not journal else ""
        shape = TextFormatter(f"{stamp}%(levelname)s %(name)s %(role)s[%(process)d]: %(message)s")
    return JournalFormatter(shape) if journal else shape


def reopen() -> str:
    """Close and reopen the log file (after logrotate moved it; SIGUSR1),
    and point stdout and stderr at the new file where they wrote to the old
    one (--daemon: a traceback printed by Python goes there too). What was
    done, for the log line; handlers without a file are left alone."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return "no log file to reopen (logging to stderr)"
    for handler in files:
        with handler.lock or contextlib.nullcontext():
            old = os.fstat(handler.stream.fileno()) if handler.stream else None
            if handler.stream:
                handler.stream.close()
            handler.stream = handler._open()  # appends: whatever was written meanwhile stays
            _follow_to(handler.stream.fileno(), old)
    return f"reopened {', '.join(h.baseFilename for h in files)}"


def _follow_to(fd: int, old: os.stat_result | None) -> None:
    """Make stdout and stderr FD where they were the file OLD."""
    for stdio in (1, 2):
        with contextlib.suppress(OSError):
            now = os.fstat(stdio)
            if old is not None and (now.st_dev, now.st_ino) == (old.st_dev, old.st_ino):
                os.dup2(fd, stdio)


def setup(level: str, log_file: Path | None = None, timestamps: bool = True, log_format: str = "text") -> None:
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    journal = log_file is None and stderr_is_journal()
    handler.setFormatter(formatter(log_format, journal, timestamps))
    handler.addFilter(_RoleFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
