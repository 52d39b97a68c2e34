"""Stopping what a dead master left behind: only processes whose identity
(PID, start time, boot) still matches what that master recorded.

Signals go through a pidfd opened *before* the identity check, so a PID
that is recycled between the check and the kill cannot be hit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from . import pidfile, state

log = logging.getLogger("gearman_workers.cleanup")


def _open_if_ours(identity: state.ProcessIdentity) -> int | None:
    try:
        fd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return None
    if identity.is_alive():
        return fd
    os.close(fd)
    return None


def _pidfd_alive(fd: int) -> bool:
    try:
        signal.pidfd_send_signal(fd, 0)
        return True
    except ProcessLookupError:
        return False


def stop_processes(identities: list[state.ProcessIdentity], grace: float) -> int:
    """TERM every recorded process that is still ours, KILL what outlives
    GRACE seconds. Returns how many were ours."""
    ours: dict[int, int] = {}
    for identity in identities:
        fd = _open_if_ours(identity)
        if fd is None:
            log.info("pid %d is not a leftover of ours (gone or reused); left alone", identity.pid)
            continue
        ours[identity.pid] = fd
        log.warning("stopping leftover process %d", identity.pid)
        signal.pidfd_send_signal(fd, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_pidfd_alive(fd) for fd in ours.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, fd in ours.items():
        if _pidfd_alive(fd):
            log.warning("leftover process %d ignored SIGTERM for %.0f s; killing it", pid, grace)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
    return len(ours)


def clean_state_file(path: Path, grace: float, we_hold_the_lock: bool = False) -> int:
    """Clean up after the pool that wrote PATH; returns leftovers stopped.

    A master calls this at start, holding the PID-file lock already: then
    the file can only be a dead predecessor's."""
    try:
        pool = state.read(path)
    except FileNotFoundError:
        return 0
    except (state.StateFileError, OSError) as err:
        log.warning("state file %s is corrupt (%s); removing it", path, err)
        path.unlink(missing_ok=True)
        return 0
    pid_path = Path(pool.pidfile)
    if not we_hold_the_lock and pidfile.is_locked(pid_path):
        log.info("pool %s is running (master %s); nothing to clean", pool.pool, pidfile.read_pid(pid_path))
        return 0
    stopped = 0
    if pool.boot_id == state.boot_id():
        # Children first: with their master gone they would only drain and leave.
        stopped = stop_processes([*pool.children, pool.master], grace)
    path.unlink(missing_ok=True)
    if not we_hold_the_lock and not pidfile.is_locked(pid_path) and pid_path.exists():
        log.info("removing stale PID file %s", pid_path)
        pid_path.unlink(missing_ok=True)
    return stopped


def clean(state_dir: Path, pool: str | None, grace: float) -> int:
    """Clean one pool's leftovers, or every pool's in STATE_DIR."""
    pattern = f"{pool}.state.json" if pool else "*.state.json"
    if not state_dir.is_dir():
        return 0
    return sum(clean_state_file(path, grace) for path in sorted(state_dir.glob(pattern)))
