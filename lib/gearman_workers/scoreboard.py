"""Shared memory in which every child publishes its state to the master.

An anonymous shared mapping made before the first fork. Each child owns one
slot and writes it without locks (a torn read costs the master one stale
figure, never a wrong decision for long); the master only reads slots. The
master owns the header (runtime-data version, poison-table version, how many
slots are in use) and the poison table: the jobs whose runs killed children.

Times are CLOCK_MONOTONIC seconds, which every process on the host shares
and which wall-clock jumps do not move.
"""

from __future__ import annotations

import dataclasses
import enum
import mmap
import struct
import time

# data version, poison version, slots in use
_HEADER = struct.Struct("<QQI4x")
# pid, state, registered once, recycle, server of the job, the servers it is
# registered with (bit I: server I), started, busy since, deadline, heartbeat, jobs done,
# jobs failed, task, job handle
_SLOT = struct.Struct("<iBBBBQddddQQ64s64s")
_BEAT = struct.Struct("<d")
_BEAT_OFFSET = struct.calcsize("<iBBBBQddd")
_STATE_OFFSET = 4
_HANDLE_OFFSET = _SLOT.size - 64
# server, kills, pid of the last child it killed, job handle, why
_POISON = struct.Struct("<B3xIi64s48s")
POISON_ENTRIES = 64


class ChildState(enum.IntEnum):
    EMPTY = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3
    STOPPING = 4


class Recycle(enum.IntEnum):
    """Why a child asked to be replaced (it stops taking jobs meanwhile)."""

    NO = 0
    MAX_JOBS = 1
    MAX_MEMORY = 2


@dataclasses.dataclass
class SlotInfo:
    pid: int
    state: ChildState
    registered_once: bool
    recycle: Recycle
    server: int
    registered_with: int  # bit I set: registered with server I
    started: float
    busy_since: float
    deadline: float
    heartbeat: float
    jobs_done: int
    jobs_failed: int
    task: str
    job_handle: str

    @property
    def registered(self) -> bool:
        """Registered with some gearmand and taking jobs (or running one)."""
        return self.registered_with != 0 and self.state in (ChildState.IDLE, ChildState.BUSY)


@dataclasses.dataclass(frozen=True)
class Poisoned:
    """A job whose runs killed children: KILLS of them, the last one LAST_PID."""

    server: int
    handle: bytes
    kills: int
    last_pid: int
    why: str


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


class Scoreboard:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._slots_at = _HEADER.size + POISON_ENTRIES * _POISON.size
        self._mem = mmap.mmap(-1, self._slots_at + slots * _SLOT.size)

    def _offset(self, slot: int) -> int:
        return self._slots_at + slot * _SLOT.size

    # --- the header (master writes, children read) ---------------------

    def header(self) -> tuple[int, int, int]:
        """(data version, poison version, slots in use)."""
        return _HEADER.unpack_from(self._mem, 0)

    @property
    def data_version(self) -> int:
        return self.header()[0]

    def bump_data_version(self) -> None:
        data, poison, used = self.header()
        _HEADER.pack_into(self._mem, 0, data + 1, poison, used)

    def set_slots_in_use(self, used: int) -> None:
        data, poison, _ = self.header()
        _HEADER.pack_into(self._mem, 0, data, poison, used)

    # --- the poison table (master writes, children read) ------------------

    def publish_poisoned(self, entries: list[Poisoned]) -> None:
        for index in range(POISON_ENTRIES):
            if index < len(entries):
                e = entries[index]
                row = (e.server, e.kills, e.last_pid, e.handle[:64], e.why.encode()[:48])
            else:
                row = (0, 0, 0, b"", b"")
            _POISON.pack_into(self._mem, _HEADER.size + index * _POISON.size, *row)
        data, poison, used = self.header()
        _HEADER.pack_into(self._mem, 0, data, poison + 1, used)

    def poisoned(self) -> dict[tuple[int, bytes], Poisoned]:
        table = {}
        for index in range(POISON_ENTRIES):
            server, kills, last_pid, handle, why = _POISON.unpack_from(self._mem, _HEADER.size + index * _POISON.size)
            if kills:
                handle = handle.rstrip(b"\0")
                table[server, handle] = Poisoned(server, handle, kills, last_pid, _text(why))
        return table

    def busy_with(self, server: int, handle: bytes, first: int, end: int) -> list[int]:
        """PIDs of the slots from FIRST to END that say they run job HANDLE
        of SERVER. On every job's path, so one search in C over the slots;
        Python runs only on a match.

        A child that just received HANDLE finds here a child that died
        holding it and that the master has not yet reaped."""
        # The handle and the NUL after it, found at the start of a handle
        # field, is an exact match (a needle of NULs would crawl the zeros).
        needle = handle + b"\0" if len(handle) < 64 else handle[:64]
        size, base = _SLOT.size, self._slots_at
        stop = base + end * size
        at = self._mem.find(needle, base + first * size, stop)
        if at < 0:
            return []
        found = []
        while at >= 0:
            slot, where = divmod(at - base, size)
            if where == _HANDLE_OFFSET:
                info = self.read(slot)
                if info.state == ChildState.BUSY and info.server == server:
                    found.append(info.pid)
            at = self._mem.find(needle, at + 1, stop)
        return found

    # --- slots -------------------------------------------------------------

    def read(self, slot: int) -> SlotInfo:
        (pid, state, once, recycle, server, registered_with, started, busy, deadline, beat, done, failed,
         task, handle) = _SLOT.unpack_from(self._mem, self._offset(slot))
        return SlotInfo(pid, ChildState(state), bool(once), Recycle(recycle), server, registered_with, started, busy,
                        deadline, beat, done, failed, _text(task), _text(handle))

    def reset(self, slot: int) -> None:
        """Master, before a fork: the slot now belongs to a child being born."""
        now = time.monotonic()
        _SLOT.pack_into(self._mem, self._offset(slot), 0, ChildState.STARTING, 0, 0, 0, 0,
                        now, 0.0, 0.0, now, 0, 0, b"", b"")

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self._mem, self._offset(slot), 0, ChildState.EMPTY, 0, 0, 0, 0,
                        0.0, 0.0, 0.0, 0.0, 0, 0, b"", b"")

    def writer(self, slot: int, pid: int) -> SlotWriter:
        return SlotWriter(self._mem, self._offset(slot), pid)


class SlotWriter:
    """The child's side: cheap writes on the job path."""

    __slots__ = ("_mem", "_offset", "jobs_done", "jobs_failed", "pid", "recycle", "registered_once",
                 "registered_with", "started")

    def __init__(self, mem: mmap.mmap, offset: int, pid: int) -> None:
        self._mem = mem
        self._offset = offset
        self.pid, self.started = pid, _SLOT.unpack_from(mem, offset)[6]
        self.registered_with = self.jobs_done = self.jobs_failed = 0
        self.registered_once = False
        self.recycle = Recycle.NO

    # Packed first, then copied in one slice assignment: struct.pack_into
    # zeroes the whole record before it writes the fields, so a master
    # reading at that instant saw a heartbeat of 0 and killed a healthy
    # child as hung. A copy leaves every field either old or new.

    def publish(self, state: ChildState, busy_since: float = 0.0, deadline: float = 0.0, server: int = 0,
                task: bytes = b"", handle: bytes = b"", now: float | None = None) -> None:
        """Write the slot; NOW (the heartbeat) when the caller has just read the clock."""
        self._mem[self._offset:self._offset + _SLOT.size] = _SLOT.pack(
            self.pid, state, self.registered_once, self.recycle, server, self.registered_with, self.started, busy_since,
            deadline, time.monotonic() if now is None else now, self.jobs_done, self.jobs_failed, task[:64],
            handle[:64])

    def beat(self) -> None:
        """The heartbeat alone (from the child's heartbeat thread)."""
        at = self._offset + _BEAT_OFFSET
        self._mem[at:at + _BEAT.size] = _BEAT.pack(time.monotonic())
