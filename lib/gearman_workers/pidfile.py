"""The master's PID file, guarded by a lock that dies with the master.

The lock is an flock() on PIDFILE.lock, never unlinked: a crashed master
cannot leave a stale lock behind, and the PID file itself is written by
rename, so readers never see half a number. The object also serves as
python-daemon's ``pidfile`` context: entering it (after detaching) records
the daemon's PID.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from .files import atomic_write


class PidFileLocked(RuntimeError):
    """Another live master holds this PID file."""


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symbolic link planted at the lock's path is refused, not followed.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_pid(self.path)
            who = f"PID {holder}" if holder else "another process"
            raise PidFileLocked(f"another master ({who}) already holds {self.path}") from None
        self._fd = fd

    def adopt(self, fd: int) -> None:
        """Hold the lock a predecessor handed over (handover.py) on FD: the
        same open file, so the lock was never free in between."""
        held, expected = os.fstat(fd), os.stat(self.lock_path, follow_symlinks=False)
        if (held.st_dev, held.st_ino) != (expected.st_dev, expected.st_ino):
            os.close(fd)
            raise PidFileLocked(f"the lock handed over is not {self.lock_path}")
        self._fd = fd

    @property
    def fileno(self) -> int | None:
        return self._fd

    def write(self, pid: int | None = None) -> None:
        atomic_write(self.path, f"{pid or os.getpid()}\n")

    def release(self) -> None:
        if self._fd is None:
            return
        if read_pid(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def forget_in_child(self) -> None:
        """In a forked child: drop the master's lock without touching files."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidFile:
        self.write()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def read_pid(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(32).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_locked(path: Path) -> bool:
    """True while a live master holds the lock of PID file PATH."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
