"""What the master needs of each of its parts, as small interfaces. The
real parts are put together in cli.py; tests put fakes in their place
(tests/test_master.py). The master decides; its parts act."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from .config import Server
from .views import MasterView


class ProcessTable(Protocol):
    """fork, signal, kill, reap (processes.py)."""

    fork_lock: threading.Lock

    def prepare(self, servers: list[Server]) -> None: ...
    def fork(self, become_child: Callable[[], int]) -> int: ...
    def signal(self, pid: int, sig: int) -> None: ...
    def kill_group(self, pid: int) -> None: ...
    def wait(self, block: bool, children: Collection[int]) -> tuple[int, int] | None: ...
    def adopted(self, children: Collection[int]) -> set[int]: ...
    def record(self, children: Iterable[int]) -> None: ...


class Systemd(Protocol):
    """sd_notify (notify.py): readiness, status, the watchdog."""

    muted: bool

    def send(self, **fields: object) -> None: ...
    def status(self, text: str) -> None: ...
    def watchdog_due(self) -> float | None: ...
    def kick_watchdog(self) -> None: ...


class Upgrades(Protocol):
    """Handing the pool to a new master (handover.Upgrades)."""

    handed_over: bool
    control_since: float

    @property
    def busy(self) -> bool: ...  # a successor is starting, or we are one not yet in charge
    def start(self, view: MasterView) -> None: ...
    def check(self, view: MasterView, listen_again: bool) -> str | None: ...
    def abandon(self, why: str) -> bool: ...
    def wait_fd(self) -> int: ...
    def deadline(self) -> float | None: ...
    def starting_as_successor(self) -> None: ...
    def announce_ready(self) -> None: ...
    def check_taken_over(self) -> None: ...
    def forget_in_child(self) -> None: ...


class Control(Protocol):
    """The fleet-control listener (control/listener.py)."""

    up: bool  # subscribed to the channel now
    outcomes: collections.Counter[tuple[str, str]]  # (outcome, reason) -> control messages

    def start(self, master: MasterView) -> None: ...
    def stop(self) -> None: ...
    def forget_in_child(self) -> None: ...


class Watcher(Protocol):
    """The queue watcher (autoscale.py)."""

    servers: list[Server]
    tasks: set[str]

    def start(self, master: MasterView) -> None: ...
    def stop(self) -> None: ...


class Exporter(Protocol):
    """The metrics server (metrics.py)."""

    def start(self, source: MasterView, pool: str, host: str, lock: threading.Lock) -> None: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...  # its listening socket, which a successor inherits (handover.py)
    def forget_in_child(self) -> None: ...


class Keeper(Protocol):
    """The job keeper (jobs/keeper.py): failures to Redis, due runs to gearmand."""

    dead_jobs: dict[str, int] | None

    def start(self, master: MasterView) -> None: ...
    def stop(self) -> None: ...
    def forget_in_child(self) -> None: ...


class Title(Protocol):
    def show(self, doing: str = "") -> None: ...


@dataclasses.dataclass
class Parts:
    processes: ProcessTable
    systemd: Systemd
    upgrades: Upgrades
    title: Title
    control: Control | None = None
    exporter: Exporter | None = None
    watcher: Watcher | None = None
    keeper: Keeper | None = None
