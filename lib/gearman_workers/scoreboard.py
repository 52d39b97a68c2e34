"""Shared memory in which every child publishes its state to the master.

An anonymous shared mapping made before the first fork: each child owns one
slot and writes it without locks (a torn read costs the master one stale
figure, never a wrong decision for long); the master only reads slots, and
owns the header, where it publishes the runtime-data version.
"""

from __future__ import annotations

import dataclasses
import enum
import mmap
import struct
import time

_HEADER = struct.Struct("<Q")
# pid, state, links up, started, busy since, heartbeat, jobs done, jobs failed, job handle
_SLOT = struct.Struct("<iBBxxdddQQ64s")


class State(enum.IntEnum):
    EMPTY = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3
    STOPPING = 4


@dataclasses.dataclass
class SlotInfo:
    pid: int
    state: State
    links_up: int
    started: float
    busy_since: float
    heartbeat: float
    jobs_done: int
    jobs_failed: int
    job_handle: str


class Scoreboard:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._mem = mmap.mmap(-1, _HEADER.size + slots * _SLOT.size)

    def _offset(self, slot: int) -> int:
        return _HEADER.size + slot * _SLOT.size

    @property
    def data_version(self) -> int:
        return _HEADER.unpack_from(self._mem, 0)[0]

    @data_version.setter
    def data_version(self, version: int) -> None:
        _HEADER.pack_into(self._mem, 0, version)

    def read(self, slot: int) -> SlotInfo:
        pid, state, links, started, busy, beat, done, failed, handle = _SLOT.unpack_from(
            self._mem, self._offset(slot))
        return SlotInfo(pid, State(state), links, started, busy, beat, done, failed,
                        handle.rstrip(b"\0").decode("ascii", "replace"))

    def reset(self, slot: int, pid: int) -> None:
        """Master, at spawn: the slot now belongs to a new child."""
        now = time.time()
        _SLOT.pack_into(self._mem, self._offset(slot), pid, State.STARTING, 0, now, 0.0, now, 0, 0, b"")

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self._mem, self._offset(slot), 0, State.EMPTY, 0, 0.0, 0.0, 0.0, 0, 0, b"")

    def writer(self, slot: int) -> SlotWriter:
        return SlotWriter(self._mem, self._offset(slot))


class SlotWriter:
    """The child's side: cheap writes on the job path."""

    __slots__ = ("_mem", "_offset", "jobs_done", "jobs_failed", "links_up", "pid", "started")

    def __init__(self, mem: mmap.mmap, offset: int) -> None:
        self._mem = mem
        self._offset = offset
        info = _SLOT.unpack_from(mem, offset)
        self.pid, self.started = info[0], info[3]
        self.links_up = self.jobs_done = self.jobs_failed = 0

    def publish(self, state: State, busy_since: float = 0.0, handle: bytes = b"") -> None:
        _SLOT.pack_into(self._mem, self._offset, self.pid, state, self.links_up, self.started,
                        busy_since, time.time(), self.jobs_done, self.jobs_failed, handle[:64])
