"""Process identities: what a master records about itself and its
children (STATE_DIR/NAME.state.json), so that a later cleanup can find its
leftovers and tell them from unrelated processes that got the same PID: the
PID plus the process start time from /proc and the kernel's boot id. The
file is written whole or not at all (files.atomic_write)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .files import atomic_write
from .procfs import start_time

STATE_VERSION = 1


class StateFileError(ValueError):
    """A state file is unreadable or not what a master writes."""


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
class PoolProcesses:
    pool: str
    boot_id: str
    master: ProcessIdentity
    children: list[ProcessIdentity]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self) | {"version": STATE_VERSION}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PoolProcesses:
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


def write(path: Path, state: PoolProcesses) -> None:
    atomic_write(path, state.to_json())


def read(path: Path) -> PoolProcesses:
    try:
        return PoolProcesses.from_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise StateFileError(f"not text: {err}") from None
