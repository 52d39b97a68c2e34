"""Stopping what a dead master left behind: only processes whose identity
(PID, start time, boot) still matches what that master recorded, and that
are gearman-workers processes.

Signals go through a pidfd opened *before* the identity check, so a PID
that is recycled between the check and the kill cannot be hit.

gm-cleanup often runs as root (ExecStartPre) over a directory others may
reach, so it trusts a state file only if neither the file nor its
directory could have been written by anyone but root or the user running
it, and it removes only the PID file the pool itself uses: never a path
read from the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import stat
import time
from pathlib import Path

from . import identities, pidfile, strays

log = logging.getLogger("gearman_workers.cleanup")


class UntrustedState(Exception):
    """A state directory or file that someone else could have written."""


def check_trusted(path: Path) -> None:
    """PATH (file or directory) is owned by root or by us, and neither
    group nor others may write it."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedState(f"{path} is a symbolic link")
    if info.st_uid not in (0, os.geteuid()):
        raise UntrustedState(f"{path} is owned by uid {info.st_uid}, not by root or uid {os.geteuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedState(f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})")


def is_ours(pid: int) -> bool:
    """The process runs gearman-workers (its command line or title says so)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"gearman_workers" in cmdline or b"gearman-workers" in cmdline


def _open_if_ours(identity: identities.ProcessIdentity, by_command_line: bool = True) -> int | None:
    try:
        fd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return None
    if identity.is_alive() and (not by_command_line or is_ours(identity.pid)):
        return fd
    os.close(fd)
    return None


def _pidfd_alive(fd: int) -> bool:
    """A pidfd turns readable when its process exits, reaped or not (a
    zombie has stopped too; a signal 0 would still reach it)."""
    return not select.select([fd], [], [], 0)[0]


def stop_processes(recorded: list[identities.ProcessIdentity], grace: float, by_command_line: bool = True) -> int:
    """TERM every recorded process that is still ours, KILL what outlives
    GRACE seconds. Returns how many were ours. A process that task code
    forked may have exec'd anything: BY_COMMAND_LINE False trusts the
    recorded identity (PID and start time, this boot) alone."""
    ours: dict[int, int] = {}
    for identity in recorded:
        fd = _open_if_ours(identity, by_command_line)
        if fd is None:
            log.info("pid %d is not a leftover of ours (gone or reused); left alone", identity.pid)
            continue
        ours[identity.pid] = fd
        log.warning("stopping leftover process %d", identity.pid)
        signal.pidfd_send_signal(fd, signal.SIGTERM)
    deadline = time.monotonic() + grace
    waiting = list(ours.values())
    while waiting and (left := deadline - time.monotonic()) > 0:
        select.select(waiting, [], [], left)  # wakes as soon as one of them exits
        waiting = [fd for fd in waiting if _pidfd_alive(fd)]
    for pid, fd in ours.items():
        if _pidfd_alive(fd):
            log.warning("leftover process %d ignored SIGTERM for %.0f s; killing it", pid, grace)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
    return len(ours)


def clean_state_file(path: Path, grace: float, pid_path: Path, we_hold_the_lock: bool = False) -> int:
    """Clean up after the pool that wrote PATH, whose PID file is PID_PATH;
    returns leftovers stopped.

    A master calls this at start, holding the PID-file lock already: then
    the file can only be a dead predecessor's."""
    try:
        check_trusted(path.parent)
        check_trusted(path)
    except FileNotFoundError:
        return 0
    try:
        pool = identities.read(path)
    except FileNotFoundError:
        return 0
    except (identities.StateFileError, OSError) as err:
        log.warning("state file %s is corrupt (%s); removing it", path, err)
        path.unlink(missing_ok=True)
        return 0
    if not we_hold_the_lock and pidfile.is_locked(pid_path):
        log.info("pool %s is running (master %s); nothing to clean", pool.pool, pidfile.read_pid(pid_path))
        return 0
    stopped = 0
    same_boot = pool.boot_id == identities.boot_id()
    if same_boot:
        # Children first: with their master gone they would only drain and leave.
        stopped = stop_processes([*pool.children, pool.master], grace)
    stopped += _stop_strays(path.parent, pool.pool, grace, same_boot)
    path.unlink(missing_ok=True)
    if not we_hold_the_lock and not pidfile.is_locked(pid_path) and pid_path.exists():
        log.info("removing stale PID file %s", pid_path)
        pid_path.unlink(missing_ok=True)
    return stopped


def _stop_strays(state_dir: Path, pool: str, grace: float, same_boot: bool) -> int:
    """Stop what the dead master's tasks forked (strays.py), then forget it."""
    recorded: list[identities.ProcessIdentity] = []
    for path in strays.forks_files(state_dir, pool):
        try:
            check_trusted(path)
            if same_boot:
                recorded += strays.read(path)
        except (UntrustedState, OSError) as err:
            log.warning("ignoring %s: %s", path, err)
            continue
        path.unlink(missing_ok=True)
    return stop_processes(recorded, grace, by_command_line=False) if recorded else 0


def clean(state_dir: Path, pool: str | None, grace: float, pid_path: Path | None = None) -> int:
    """Clean one pool's leftovers, or every pool's in STATE_DIR (each with
    its PID file at PID_PATH, by default STATE_DIR/NAME.pid)."""
    pattern = f"{pool}.state.json" if pool else "*.state.json"
    if not state_dir.is_dir():
        return 0
    return sum(clean_state_file(path, grace, pid_path or state_dir / f"{path.name.removesuffix('.state.json')}.pid")
               for path in sorted(state_dir.glob(pattern)))
