"""What a master records about itself and its children, so that a later
cleanup can find its leftovers and tell them from unrelated processes that
got the same PID: the PID plus the process start time from /proc and the
kernel's boot id. Every file is written whole or not at all."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .procfs import start_time

STATE_VERSION = 1


class StateFileError(ValueError):
    """A state file is unreadable or not what a master writes."""


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a
    moment, in every thread)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o022


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file beside PATH, then rename it over PATH. The
    file gets the mode the umask gives (0640 under the unit's UMask=0027):
    runtime data may hold tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def is_alive(self) -> bool:
        """True while PID is still the very process that was recorded."""
        return start_time(self.pid) == self.start_time


@dataclasses.dataclass
class PoolState:
    pool: str
    boot_id: str
    master: ProcessIdentity
    children: list[ProcessIdentity]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self) | {"version": STATE_VERSION}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PoolState:
        try:
            raw: Any = json.loads(text)
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            return cls(
                pool=str(raw["pool"]),
                boot_id=str(raw["boot_id"]),
                master=_identity(raw["master"]),
                children=[_identity(child) for child in raw["children"]],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StateFileError(f"{type(err).__name__}: {err}") from None


def _identity(raw: Any) -> ProcessIdentity:
    pid, started = raw["pid"], raw["start_time"]
    if type(pid) is not int or type(started) is not int or pid <= 1:
        raise ValueError(f"bad process entry {raw!r}")
    return ProcessIdentity(pid, started)


def write(path: Path, state: PoolState) -> None:
    atomic_write(path, state.to_json())


def read(path: Path) -> PoolState:
    try:
        return PoolState.from_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise StateFileError(f"not text: {err}") from None
