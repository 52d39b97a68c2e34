"""What a child starts from, and how a freshly forked process becomes one.

The master holds one ChildKit: the configuration and tasks children are
built with, the runtime data they start with, the job counters they count
into. become_child() runs on the child's side of the fork: it arms the
death signal, makes its own process group, forgets what belongs to the
master (the `forgotten` list: each part closes its own descriptors) and
runs the worker (child.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import config as configuration
from . import files, hooks, runtime, strays, titles
from . import log as logsetup
from .child import Limits, Worker, run_child
from .jobstats import JobStats
from .prctl import PR_SET_PDEATHSIG, prctl
from .scoreboard import Scoreboard
from .strays import StrayLog
from .taskctl.switchboard import Row, Switchboard
from .tasks import TaskLoadError, load_tasks

if TYPE_CHECKING:
    from .jobs.runs import JobLife

log = logging.getLogger("gearman_workers.master")


class Forgets(Protocol):
    """A part of the master that a child must not keep (its descriptors)."""

    def forget_in_child(self) -> None: ...


class ReloadFailed(Exception):
    """The configuration or the tasks on disk do not load; the text says why."""


class ChildKit:
    def __init__(self, config: configuration.Config, tasks: dict[str, Callable[..., Any]], board: Scoreboard,
                 nudge_fd: int, count_jobs: bool) -> None:
        self.config, self.tasks, self.board = config, tasks, board
        self.hooks = load_hooks(config)
        self.master_pid = os.getpid()
        self.nudge_fd = nudge_fd  # a child writes here when its registration changes
        self.count_jobs = count_jobs  # metrics are served: children count their jobs
        self.stats = JobStats(board.slots)
        self.stats.add_tasks(tasks)
        self.forgotten: list[Forgets] = []
        self.switchboard: Switchboard | None = None  # what children offer gearmand (taskctl/), with fleet control

    def reload(self) -> configuration.Config:
        """Children from now on start from the configuration and tasks on disk."""
        try:
            fresh = configuration.reload(self.config)
            tasks, fresh_hooks = load_tasks(fresh), load_hooks(fresh)
        except (configuration.ConfigError, TaskLoadError) as err:
            raise ReloadFailed(str(err)) from None
        self.config, self.tasks, self.hooks = fresh, tasks, fresh_hooks
        self.stats.add_tasks(tasks)
        return fresh

    def publish_data(self, values: dict[str, Any]) -> None:
        """New runtime data: children forked from now on start with it, the
        running ones pick it up before their next job."""
        if values == runtime.snapshot() and self.config.runtime_file.exists():
            return
        files.atomic_write(self.config.runtime_file, json.dumps(values, sort_keys=True))
        runtime.replace(values)
        self.board.bump_data_version()

    def become_child(self, slot: int, limits: Limits, group: str | None) -> int:
        """In the child, right after fork(): the exit status."""
        try:
            # SIGKILL, not TERM: even a wedged child must not outlive its
            # master; gearmand hands a dead worker's job to another worker.
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.master_pid:
                return 0  # the master died before the death signal was armed
            os.setpgid(0, 0)  # our own group: the task's processes die with us
            logsetup.set_role(f"child {slot}")
            signal.set_wakeup_fd(-1)
            for part in self.forgotten:
                part.forget_in_child()
            code = run_child(self._worker(slot, limits, group))
        except BaseException:
            log.exception("child failed to start")
            code = 1
        logging.shutdown()
        return code

    def task_names(self, group: str | None) -> list[str]:
        """The tasks a child of GROUP registers (None: the shared children)."""
        return [group] if group is not None else self.config.shared_tasks()

    def _worker(self, slot: int, limits: Limits, group: str | None) -> Worker:
        config = self.config
        names = self.task_names(group)
        return Worker(config, {name: self.tasks[name] for name in names}, self.board,
                      self.board.writer(slot, os.getpid()), self.master_pid, self.nudge_fd, limits,
                      self.stats.counter(slot) if self.count_jobs else None, titles.child(slot, config.name, group),
                      StrayLog(strays.forks_file(config.state_dir, config.name, os.getpid())),
                      *job_lives(config, names), self._row(slot, names), self.hooks)

    def _row(self, slot: int, names: list[str]) -> Row | None:
        if self.switchboard is None:
            return None
        metered = frozenset(name for name in names if self.config.tasks[name].rate)
        return self.switchboard.reader(slot, names, metered)


def load_hooks(config: configuration.Config) -> hooks.Hooks:
    """[hooks], loaded; TaskLoadError names the hook that does not load."""
    try:
        return hooks.load(config.hook_specs(), config.hook_exit_timeout)
    except TaskLoadError as err:
        raise TaskLoadError(f"cannot load a hook: {err}", err.temporary) from err.__cause__


def job_lives(config: configuration.Config,
              names: list[str]) -> tuple[dict[str, JobLife], Callable[[str], JobLife] | None]:
    """The tasks among NAMES whose jobs leave records, with what they need
    (jobs/runs.py); and, in a pool under fleet control, how to give any
    task that need when a run the leader submitted comes (a delayed job)."""
    if config.redis_url is None:
        return {}, None
    from .jobs.keys import JobKeys  # here: a pool without fleet control never loads redis
    from .jobs.runs import ChildRedis, JobLife
    from .jobs.spool import Spool, spool_dir

    link = ChildRedis(config.redis_url, JobKeys(config.key_prefix))
    spool = Spool(spool_dir(config))

    def life(name: str) -> JobLife:
        return JobLife(name, config.tasks[name], link, spool, config.hostname, config.name)
    return {name: life(name) for name in names if config.tasks[name].lifecycle}, life
