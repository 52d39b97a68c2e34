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

# data version, poison version, slots in use: three words, so that a child
# reads one with an index into a memoryview (see Scoreboard.words)
_HEADER = struct.Struct("<QQQ")
DATA_VERSION, POISON_VERSION, SLOTS_IN_USE = range(3)
# A slot is two records, and its job's handle kept apart (see _LINE). What
# a child writes when it starts or its registration changes: pid,
# registered once, recycle, the servers it is registered with (bit I:
# server I), started.
_SETUP = struct.Struct("<iBB2xQd")
# What it writes around every job, in one copy each: state, server of the
# job, busy since, deadline, heartbeat, jobs done, jobs failed, task, job
# unique (cancel finds a job by it). Between jobs only the head up to the
# counts (_BETWEEN): the task of the last job stays, and the state says it
# is over.
_JOB = struct.Struct("<BB6xdddQQ64s64s")
_BETWEEN = struct.Struct("<BB6xdddQQ")
_SLOT_SIZE = _SETUP.size + _JOB.size
_BEAT = struct.Struct("<d")
_BEAT_OFFSET = _SETUP.size + struct.calcsize("<BB6xdd")
# Every child searches the handles of every slot before each job (the
# poison check), while each child rewrites its own slot twice a job. So the
# handles live apart, a cache line each, and each slot starts on a line of
# its own: the search reads one line per child, not every slot's hot
# fields, and no two children ever write the same line (bench/README.md,
# "Cache lines shared between children").
_LINE = 64
HANDLE_FIELD = _LINE  # bytes of a job handle kept for a slot
_HANDLE = struct.Struct(f"{HANDLE_FIELD}s")


def _lines(size: int) -> int:
    """SIZE rounded up to whole cache lines."""
    return -(-size // _LINE) * _LINE


_SLOT_STRIDE = _lines(_SLOT_SIZE)
# server, kills, pid of the last child it killed, job handle, why
_POISON = struct.Struct("<B3xIi64s48s")
POISON_ENTRIES = 64


class ChildState(enum.IntEnum):
    EMPTY = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3
    STOPPING = 4


# The states a child writes around every job, as module globals: a member
# looked up on its enum class costs about a thousand instructions.
BUSY, IDLE = ChildState.BUSY, ChildState.IDLE


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
    job_unique: bytes
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


def _needle(handle: bytes) -> bytes:
    """What names job HANDLE in a slot: the handle and the NUL after it,
    found at the start of a handle field, is an exact match (a needle of
    NULs would crawl the zeros); a handle that fills its field has no NUL."""
    return (handle + b"\0")[:HANDLE_FIELD]


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


class Scoreboard:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        # The mapping starts on a page: offsets that are whole lines are lines.
        self._handles_at = _lines(_HEADER.size + POISON_ENTRIES * _POISON.size)
        self._slots_at = self._handles_at + slots * HANDLE_FIELD
        self._mem = mmap.mmap(-1, self._slots_at + slots * _SLOT_STRIDE)
        # The header as words: a child compares a version on every job.
        self.words = memoryview(self._mem)[:_HEADER.size].cast("Q")

    def _offset(self, slot: int) -> int:
        return self._slots_at + slot * _SLOT_STRIDE

    def _handle_offset(self, slot: int) -> int:
        return self._handles_at + slot * HANDLE_FIELD

    # --- the header (master writes, children read) ---------------------

    @property
    def data_version(self) -> int:
        return self.words[DATA_VERSION]

    @property
    def slots_in_use(self) -> int:
        return self.words[SLOTS_IN_USE]

    def bump_data_version(self) -> None:
        self.words[DATA_VERSION] += 1

    def set_slots_in_use(self, used: int) -> None:
        self.words[SLOTS_IN_USE] = used

    # --- the poison table (master writes, children read) ------------------

    def publish_poisoned(self, entries: list[Poisoned]) -> None:
        """The table, then its new version: a child that sees the version has the table."""
        for index in range(POISON_ENTRIES):
            if index < len(entries):
                e = entries[index]
                row = (e.server, e.kills, e.last_pid, e.handle[:64], e.why.encode()[:48])
            else:
                row = (0, 0, 0, b"", b"")
            _POISON.pack_into(self._mem, _HEADER.size + index * _POISON.size, *row)
        self.words[POISON_VERSION] += 1

    def poisoned(self) -> dict[tuple[int, bytes], Poisoned]:
        table = {}
        for index in range(POISON_ENTRIES):
            server, kills, last_pid, handle, why = _POISON.unpack_from(self._mem, _HEADER.size + index * _POISON.size)
            if kills:
                handle = handle.rstrip(b"\0")
                table[server, handle] = Poisoned(server, handle, kills, last_pid, _text(why))
        return table

    def may_name_job(self, handle: bytes) -> bool:
        """Might some slot in use name job HANDLE? One search in C through
        the slots' handles, made before every job; a match (now and then a
        longer handle that starts with it, or one across two fields) is
        settled by busy_with."""
        start = self._handles_at  # _find written out: a call less on every job's path
        return self._mem.find(handle[:HANDLE_FIELD], start, start + self.words[SLOTS_IN_USE] * HANDLE_FIELD) >= 0

    def busy_with(self, server: int, handle: bytes) -> list[int]:
        """PIDs of the slots that say they run job HANDLE of SERVER: a
        child that just received HANDLE finds here a child that died holding
        it and that the master has not yet reaped."""
        needle, base = _needle(handle), self._handles_at
        found = []
        at = self._find(needle, base)
        while at >= 0:
            slot, where = divmod(at - base, HANDLE_FIELD)
            if where == 0:
                info = self.read(slot)
                if info.state == ChildState.BUSY and info.server == server:
                    found.append(info.pid)
            at = self._find(needle, at + 1)
        return found

    def _find(self, needle: bytes, start: int) -> int:
        """NEEDLE's offset from START on in the handles of the slots in use (not the free slots' zeros), or -1."""
        return self._mem.find(needle, start, self._handles_at + self.words[SLOTS_IN_USE] * HANDLE_FIELD)

    # --- slots -------------------------------------------------------------

    def read(self, slot: int) -> SlotInfo:
        offset = self._offset(slot)
        pid, once, recycle, registered_with, started = _SETUP.unpack_from(self._mem, offset)
        state, server, busy, deadline, beat, done, failed, task, unique = _JOB.unpack_from(
            self._mem, offset + _SETUP.size)
        (handle,) = _HANDLE.unpack_from(self._mem, self._handle_offset(slot))
        return SlotInfo(pid, ChildState(state), bool(once), Recycle(recycle), server, registered_with, started, busy,
                        deadline, beat, done, failed, _text(task), unique.rstrip(b"\0"), _text(handle))

    def reset(self, slot: int) -> None:
        """Master, before a fork: the slot now belongs to a child being born."""
        now = time.monotonic()
        self._fill(slot, _SETUP.pack(0, 0, 0, 0, now),
                   _JOB.pack(ChildState.STARTING, 0, 0.0, 0.0, now, 0, 0, b"", b""))

    def clear(self, slot: int) -> None:
        self._fill(slot, _SETUP.pack(0, 0, 0, 0, 0.0),
                   _JOB.pack(ChildState.EMPTY, 0, 0.0, 0.0, 0.0, 0, 0, b"", b""))

    def _fill(self, slot: int, setup: bytes, job: bytes) -> None:
        offset, handle_at = self._offset(slot), self._handle_offset(slot)
        self._mem[offset:offset + _SLOT_SIZE] = setup + job
        self._mem[handle_at:handle_at + HANDLE_FIELD] = bytes(HANDLE_FIELD)

    def writer(self, slot: int, pid: int) -> SlotWriter:
        return SlotWriter(self._mem, self._offset(slot), self._handle_offset(slot), pid)


class SlotWriter:
    """The child's side: cheap writes on the job path."""

    __slots__ = ("_between", "_handle", "_job", "_mem", "_setup", "jobs_done", "jobs_failed", "pid", "recycle",
                 "registered_once", "registered_with", "started")

    def __init__(self, mem: mmap.mmap, offset: int, handle_at: int, pid: int) -> None:
        self._mem = mem
        self._handle = slice(handle_at, handle_at + HANDLE_FIELD)
        self._setup = slice(offset, offset + _SETUP.size)
        self._job = slice(offset + _SETUP.size, offset + _SLOT_SIZE)
        self._between = slice(offset + _SETUP.size, offset + _SETUP.size + _BETWEEN.size)
        self.pid, self.started = pid, _SETUP.unpack_from(mem, offset)[4]
        self.registered_with = self.jobs_done = self.jobs_failed = 0
        self.registered_once = False
        self.recycle = Recycle.NO

    # Packed first, then copied in one slice assignment: struct.pack_into
    # zeroes the whole record before it writes the fields, so a master
    # reading at that instant saw a heartbeat of 0 and killed a healthy
    # child as hung. A copy leaves every field either old or new.

    def publish(self, state: ChildState, now: float | None = None) -> None:
        """The whole slot, between jobs (starting, registration changed,
        recycling, stopping); NOW (the heartbeat) when the caller has just
        read the clock."""
        self.publish_setup()
        self.between_jobs(state, time.monotonic() if now is None else now)

    def publish_setup(self) -> None:
        """What is not about the job (registration, recycling), alone: a job may be in the slot."""
        self._mem[self._setup] = _SETUP.pack(self.pid, self.registered_once, self.recycle, self.registered_with,
                                             self.started)

    def busy(self, since: float, deadline: float, server: int, task: bytes, unique: bytes, handle: bytes) -> None:
        """A job starts (DEADLINE 0: no time limit): the master now counts it
        as this child's. The handle first: a slot that says busy names its job."""
        mem = self._mem
        mem[self._handle] = _HANDLE.pack(handle)
        mem[self._job] = _JOB.pack(BUSY, server, since, deadline, since, self.jobs_done, self.jobs_failed, task, unique)

    def between_jobs(self, state: ChildState, now: float) -> None:
        """No job held: STATE, the heartbeat NOW and the counts."""
        self._mem[self._between] = _BETWEEN.pack(state, 0, 0.0, 0.0, now, self.jobs_done, self.jobs_failed)

    def beat(self) -> None:
        """The heartbeat alone (from the child's heartbeat thread)."""
        at = self._job.start - _SETUP.size + _BEAT_OFFSET
        self._mem[at:at + _BEAT.size] = _BEAT.pack(time.monotonic())
