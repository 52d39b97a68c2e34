"""What the master can be asked to do. Signal handlers and the control
listener only put one of these on the master's queue; the main loop acts."""

from __future__ import annotations

import dataclasses
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .autoscale import QueueDepth


@dataclasses.dataclass(frozen=True)
class Stop:
    why: str
    graceful: bool = True
    hurry_if_stopping: bool = False  # a second Ctrl-C means: now


@dataclasses.dataclass(frozen=True)
class Reload:
    """Re-read the configuration and replace the children one at a time."""


@dataclasses.dataclass(frozen=True)
class Upgrade:
    """Hand the pool to a fresh master running the code on disk (handover.py)."""


@dataclasses.dataclass(frozen=True)
class Scale:
    to: int | None = None
    by: int = 0


@dataclasses.dataclass(frozen=True)
class PublishData:
    values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class QueueSeen:
    """What gearmand's queues held for the shared tasks (autoscale.py)."""

    depth: QueueDepth


Command = Stop | Reload | Upgrade | Scale | PublishData | QueueSeen

FROM_SIGNAL: dict[int, Command] = {
    signal.SIGTERM: Stop("SIGTERM"),
    signal.SIGINT: Stop("SIGINT", hurry_if_stopping=True),
    signal.SIGQUIT: Stop("SIGQUIT", graceful=False),
    signal.SIGHUP: Reload(),
    signal.SIGUSR2: Upgrade(),
    signal.SIGTTIN: Scale(by=1),
    signal.SIGTTOU: Scale(by=-1),
}
