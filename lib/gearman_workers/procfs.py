"""What /proc says about processes."""

from __future__ import annotations

import os
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    return stat[stat.rindex(b")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def children_of(parent: int) -> set[int]:
    """Live (not zombie) processes whose parent is PARENT."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent and fields[0] not in (b"Z", b"X"):
                found.add(int(entry.name))
    return found


def resident_bytes(pid: int | str = "self") -> int | None:
    """The process's resident set size, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (FileNotFoundError, ProcessLookupError):
        return None
