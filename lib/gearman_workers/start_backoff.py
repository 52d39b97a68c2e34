"""A start that failed for a passing reason waits before it exits, longer
each time.

Task code or a preload that raised while running (a database down at
import) exits with EXIT_RETRY, which systemd restarts; code that cannot
load exits 3, which it does not (tasks.py tells them apart). Before
exiting, the master waits 1, 2, 4 ... up to 60 s, by the failures in a row
so far: an outage of an hour costs a restart a minute, and stays under the
unit's start limit, which is there for fast crash loops. The count is kept
in STATE_DIR/NAME.start-failures (the runtime directory outlives the
restarts) and cleared by the first start that loads."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from . import files
from .config import Config
from .notify import Notifier

EXIT_RETRY = 75  # EX_TEMPFAIL (sysexits.h): try again later
FIRST_WAIT, LONGEST_WAIT = 1.0, 60.0

log = logging.getLogger("gearman_workers")


def failures_file(config: Config) -> Path:
    return config.state_dir / f"{config.name}.start-failures"


def wait_before_exit(config: Config, why: str, notifier: Notifier | None = None) -> float:
    """Count this failure and wait its turn; the seconds waited."""
    path = failures_file(config)
    try:
        failures = int(path.read_text())
    except (OSError, ValueError):
        failures = 0
    wait = min(LONGEST_WAIT, FIRST_WAIT * 2 ** failures)
    with contextlib.suppress(OSError):  # no state directory yet: wait the first turn every time
        files.atomic_write(path, str(failures + 1))
    log.warning("start failed %d time(s) in a row for a passing reason; exiting %d in %g s for a restart",
                failures + 1, EXIT_RETRY, wait)
    (notifier or Notifier()).send(status=f"start failed ({' '.join(why.split())[:200]}); retrying in {wait:g} s")
    time.sleep(wait)
    return wait


def loaded(config: Config) -> None:
    """The code loaded: the next failure starts from the shortest wait."""
    with contextlib.suppress(OSError):
        failures_file(config).unlink(missing_ok=True)
