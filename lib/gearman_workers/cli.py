"""Command-line entry points: gearman-workers (the pool) and gm-cleanup.

Exit statuses of gearman-workers carry meaning, for systemd and scripts:
0 stopped on request, 1 unexpected error, 2 bad configuration or flags,
3 task code cannot be loaded, 4 another master holds the PID file, 75
task code or preload raised while running (start_backoff.py: systemd
starts it again; 2, 3 and 4 it does not).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, cleanup, identities, start_backoff, titles
from . import config as configuration
from . import log as logsetup
from .files import current_umask
from .handover import Handover, UpgradeFailed, Upgrades, request_upgrade
from .master import Master
from .notify import Notifier
from .parts import Parts
from .pidfile import PidFile, PidFileLocked
from .processes import OsProcessTable
from .procfs import resident_bytes

if TYPE_CHECKING:  # imported where used: a pool without Redis, autoscaling or metrics loads none of them
    from .control.listener import ControlListener
    from .jobs.keeper import JobKeeper
    from .metrics import MetricsServer
    from .queues import QueueWatcher
    from .taskctl.governor import Governor
    from .taskctl.steering import Steering
from .bootstrap import load_hooks
from .tasks import Task, TaskLoadError, load_tasks, run_preload

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_TASKS, EXIT_LOCKED = 0, 1, 2, 3, 4
log = logging.getLogger("gearman_workers")


def _fail(prog: str, message: str, status: int, handover: Handover | None = None,
          cause: BaseException | None = None) -> int:
    """One line on stderr (then CAUSE's traceback, with the same prefix);
    as a successor, the line to our predecessor too."""
    print(f"{prog}: {message}", file=sys.stderr)
    if cause is not None:
        for line in "".join(traceback.format_exception(cause)).rstrip().splitlines():
            print(f"{prog}: {line}", file=sys.stderr)
    if handover is not None:
        handover.announce_failure(message)
    return status


def _load_failed(err: TaskLoadError) -> int:
    """Task code or preload: exit 3 for code that cannot load, EXIT_RETRY
    when running it raised (start_backoff.py)."""
    return start_backoff.EXIT_RETRY if err.temporary else EXIT_TASKS


def pool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gearman-workers", description="Run a supervised pre-fork pool of Gearman workers.")
    configuration.add_arguments(parser)
    parser.add_argument("--daemon", action="store_true", help="detach and run in the background")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, load the tasks, and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the configuration in effect (file and flags merged) as TOML, and exit")
    parser.add_argument("--upgrade", action="store_true",
                        help="hand the running pool of this configuration to a new master on the code now on "
                        "disk, without a gap (SIGUSR2); wait until it is in charge (exit 0) or given up (exit 1)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


class Refused(Exception):
    """A start-up step that cannot go on: its one line, the exit status, and
    the exception behind it when its traceback helps."""

    def __init__(self, message: str, status: int, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.status, self.cause = status, cause


def main(argv: list[str] | None = None) -> int:
    args = pool_parser().parse_args(argv)
    handover: Handover | None = None
    try:
        handover = _handover()
        config, control = _configure(args)
        if args.print_config:
            print(configuration.to_toml(config), end="")
            return EXIT_OK
        if args.upgrade:
            return _upgrade(config)
        logsetup.setup(config.log_level, log_format=config.log_format)
        tasks = _load_tasks(config, starting=not args.check_config and handover is None)
        if args.check_config:
            print(_summary(config, tasks))
            return EXIT_OK
        _check(configuration.check_paths, config)
        pidfile = PidFile(config.pidfile)
        if handover is not None:
            return _take_over(config, tasks, pidfile, control, handover)
        _acquire(pidfile, config)
    except Refused as err:
        return _fail("gearman-workers", str(err), err.status, handover, err.cause)
    return _serve(config, tasks, pidfile, control, args.daemon)


def _handover() -> Handover | None:
    """Our predecessor's handover, when a running master started us to take over (handover.py)."""
    try:
        return Handover.from_environment()
    except ValueError as err:
        raise Refused(str(err), EXIT_ERROR) from None


def _check(step: Callable[..., object], *args: object) -> None:
    try:
        step(*args)
    except configuration.ConfigError as err:
        raise Refused(f"config error: {err}", EXIT_CONFIG) from None


def _configure(args: argparse.Namespace) -> tuple[configuration.Config, ControlListener | None]:
    try:
        config = configuration.load(args, require_tasks=not args.upgrade)  # --upgrade loads no code
        if args.upgrade:
            return config, None
        configuration.check_control(config)
        return config, _build_control(config)
    except configuration.ConfigError as err:
        raise Refused(f"config error: {err}", EXIT_CONFIG) from None


def _load_tasks(config: configuration.Config, starting: bool) -> dict[str, Task]:
    try:
        tasks = load_tasks(config)
        load_hooks(config)  # said now, as a task that does not load is; the master's kit loads them for use
    except TaskLoadError as err:
        if starting and err.temporary:
            start_backoff.wait_before_exit(config, str(err))
        raise Refused(str(err), _load_failed(err), err.__cause__) from None
    _check(configuration.check_limits, config, resident_bytes() or 0)  # the tasks are loaded: a child's size
    return tasks


def _summary(config: configuration.Config, tasks: dict[str, Task]) -> str:
    size = (f"{config.min_processes}-{config.max_processes} processes (autoscaling)" if config.autoscaling
            else f"{config.processes} processes")
    dedicated = "".join(f", {n} only for {task}" for task, n in config.dedicated().items())
    return (f"configuration OK: pool {config.name}, {size}{dedicated}, "
            f"tasks {', '.join(tasks)}, servers {', '.join(map(str, config.servers))}")


def _acquire(pidfile: PidFile, config: configuration.Config) -> None:
    """The PID-file lock, then what a dead predecessor left behind."""
    try:
        pidfile.acquire()
    except PidFileLocked as err:
        raise Refused(str(err), EXIT_LOCKED) from None
    except OSError as err:
        raise Refused(f"config error: [pool] pidfile: cannot lock {config.pidfile}: {err.strerror}",
                      EXIT_CONFIG) from None
    try:
        cleanup.clean_state_file(config.processes_file, config.graceful_timeout, config.pidfile, we_hold_the_lock=True)
    except cleanup.UntrustedState as err:
        pidfile.release()
        raise Refused(f"config error: [pool] state_dir: refusing to use it: {err}", EXIT_CONFIG) from None


def _serve(config: configuration.Config, tasks: dict[str, Task], pidfile: PidFile,
           control: ControlListener | None, daemon: bool) -> int:
    try:
        exporter = _build_exporter(config)  # before detaching: a taken port is said on the terminal
        watcher = _build_watcher(config)
        if daemon:
            _daemonize(config, pidfile, [exporter.fileno()] if exporter else [])
        else:
            pidfile.write()
        run_preload(config)
        start_backoff.loaded(config)
        return Master(config, tasks, _parts(config, pidfile, control, exporter, watcher)).run()
    except TaskLoadError as err:
        log.error("%s", err, exc_info=err.__cause__)
        if err.temporary:
            start_backoff.wait_before_exit(config, str(err))
        return _load_failed(err)
    except MetricsUnavailable as err:
        return _fail("gearman-workers", f"config error: {err}", EXIT_CONFIG)
    finally:
        pidfile.release()


def _take_over(config: configuration.Config, tasks: dict, pidfile: PidFile, control: ControlListener | None,
               handover: Handover) -> int:
    """Run as the successor of a running master (handover.py): its lock,
    no cleanup (its processes are alive and ours to outlast), no PID file
    until it hands over, and no second detach under --daemon."""
    try:
        pidfile.adopt(handover.lock_fd)
    except (PidFileLocked, OSError) as err:
        return _fail("gearman-workers", f"cannot take over: {err}", EXIT_LOCKED, handover)
    if config.args is not None and config.args.daemon:
        logsetup.setup(config.log_level, _daemon_log_file(config), log_format=config.log_format)
    try:
        run_preload(config)
        exporter = _build_exporter(config, handover.metrics_fd)
        parts = _parts(config, pidfile, control, exporter, _build_watcher(config), handover,
                       handover.predecessor_processes(config.processes_file))
        return Master(config, tasks, parts).run()
    except TaskLoadError as err:
        log.error("%s", err, exc_info=err.__cause__)
        handover.announce_failure(str(err))
        return _load_failed(err)
    except MetricsUnavailable as err:
        return _fail("gearman-workers", f"config error: {err}", EXIT_CONFIG, handover)
    finally:
        pidfile.release()


def _parts(config: configuration.Config, pidfile: PidFile, control: ControlListener | None,
           exporter: MetricsServer | None, watcher: QueueWatcher | None, handover: Handover | None = None,
           inherited: list[identities.ProcessIdentity] | None = None) -> Parts:
    """The master's parts (parts.py), real ones."""
    processes = OsProcessTable(config.processes_file, config.state_dir, config.name, inherited)
    systemd = Notifier()
    upgrades = Upgrades(config.pidfile, config.upgrade_timeout, pidfile, systemd, processes.fork_lock,
                        exporter, handover, control)
    steering = _build_steering(config)
    return Parts(processes, systemd, upgrades, titles.master(config.name), control, exporter, watcher,
                 _build_keeper(config), steering, _build_governor(config, steering))


def _upgrade(config: configuration.Config) -> int:
    """Hand the pool to a new master. --pidfile P alone is enough: the
    master's processes file is beside it (STATE_DIR/NAME.state.json for
    STATE_DIR/NAME.pid)."""
    processes = config.processes_file
    if not processes.exists() and config.pidfile.suffix == ".pid":
        processes = config.pidfile.with_name(config.pidfile.stem + ".state.json")
    try:
        print(request_upgrade(config.pidfile, processes, config.upgrade_timeout + 10))
    except (UpgradeFailed, OSError) as err:
        return _fail("gearman-workers --upgrade", str(err), EXIT_ERROR)
    return EXIT_OK


def _build_control(config: configuration.Config) -> ControlListener | None:
    if config.redis_url is None:
        return None
    from .control.listener import ControlListener

    return ControlListener.from_config(config)


def _build_keeper(config: configuration.Config) -> JobKeeper | None:
    """The job keeper, for a pool under fleet control: any pool may lead, and
    the leader submits delayed jobs whatever its own tasks."""
    if config.redis_url is None:
        return None
    from .jobs import runs  # noqa: F401  loaded once here, not in every child (bootstrap.job_lives)
    from .jobs.keeper import JobKeeper

    return JobKeeper(config)


def _build_steering(config: configuration.Config) -> Steering | None:
    """Task control (pause, cancel, limits), for a pool under fleet control."""
    if config.redis_url is None:
        return None
    from .taskctl.steering import Steering

    return Steering(config, configuration.MAX_PROCESSES + 1)


def _build_governor(config: configuration.Config, steering: Steering | None) -> Governor | None:
    """The thread that holds concurrency tokens and start permits, for a pool under fleet control (it
    idles, without a connection, while no task has a limit: a reload may bring one)."""
    if steering is None:
        return None
    from .taskctl.governor import Governor

    return Governor(config, steering)


def _build_watcher(config: configuration.Config) -> QueueWatcher | None:
    """The thread that polls gearmand's queues, for an autoscaling pool or one that serves metrics."""
    if not (config.autoscaling or config.metrics_listen):
        return None
    from .queues import QueueWatcher

    return QueueWatcher(config.servers, config.shared_tasks(), list(config.tasks))


class MetricsUnavailable(Exception):
    """The metrics address cannot be listened on."""


def _build_exporter(config: configuration.Config, inherited_fd: int = -1) -> MetricsServer | None:
    """The metrics server, listening (on the predecessor's socket when it
    listens where we are told to); None when metrics are off."""
    if config.metrics_listen is None:
        if inherited_fd >= 0:
            os.close(inherited_fd)
        return None
    from .metrics import MetricsServer

    try:
        return MetricsServer(config.metrics_listen, inherited_fd)
    except OSError as err:
        raise MetricsUnavailable(f"[metrics] listen: cannot listen on {config.metrics_listen}: "
                                 f"{err.strerror or err}") from None


def _daemon_log_file(config: configuration.Config) -> Path:
    return config.log_file or config.state_dir / f"{config.name}.log"


def _daemonize(config: configuration.Config, pidfile: PidFile, keep_open: list[int]) -> None:
    import daemon  # python-daemon: fork twice, setsid, close fds, umask, cwd

    log_file = _daemon_log_file(config)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = log_file.open("a", buffering=1)
    context = daemon.DaemonContext(
        # The umask we were given (the unit's 0027, an operator's): runtime
        # data may hold tokens, and python-daemon's default 022 opens it to all.
        working_directory="/", umask=current_umask(), pidfile=pidfile, detach_process=True,
        files_preserve=[pidfile.fileno, *keep_open], stdout=stream, stderr=stream)
    context.open()
    logsetup.setup(config.log_level, log_file, log_format=config.log_format)


def cleanup_main(argv: list[str] | None = None) -> int:
    prog = "gm-cleanup"
    parser = argparse.ArgumentParser(
        prog=prog, description="Stop what a dead gearman-workers master left behind, "
        "only where the recorded identity still matches, and remove stale files.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--state-dir", type=Path, help="state directory (every pool in it)")
    where.add_argument("--config", type=Path, help="the pool's configuration file")
    parser.add_argument("--pool", help="only this pool (default: every pool in the state directory)")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="how long leftovers may take to stop before SIGKILL (default 10)")
    args = parser.parse_args(argv)
    logsetup.setup("info", timestamps=False)
    state_dir, pool, pid_path = args.state_dir, args.pool, None
    if args.config is not None:
        try:
            config = configuration.load(path=args.config, require_tasks=False)
        except configuration.ConfigError as err:
            return _fail(prog, f"config error: {err}", EXIT_CONFIG)
        state_dir, pool = config.state_dir, pool or config.name
        pid_path = config.pidfile if pool == config.name else None
    state_dir = state_dir or Path("/run/gearman-workers")
    try:
        stopped = cleanup.clean(state_dir, pool, args.grace, pid_path)
    except cleanup.UntrustedState as err:
        return _fail(prog, f"refusing to act: {err}", EXIT_ERROR)
    except OSError as err:
        return _fail(prog, f"{err.filename or state_dir}: {err.strerror}", EXIT_ERROR)
    logging.getLogger("gearman_workers.cleanup").info(
        "cleanup of %s done: %d leftover process(es) stopped", state_dir, stopped)
    return EXIT_OK
