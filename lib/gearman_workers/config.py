"""Configuration: a TOML file, every key overridable by a command-line flag.

One table (OPTIONS) describes every key once; the TOML reader, the validator
and the argparse flags are all derived from it, so a key cannot exist in one
place and be missing in another.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .periodic.spec import Schedule
from .periodic.spec import parse as parse_schedules

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_PROCESSES = 1024
MAX_CONCURRENCY = 100_000
MAX_SERVERS = 64  # a child's registrations are one 64-bit mask in the scoreboard
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SPEC_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024  # a command task's stdout (command_task.py)
NAMED_TABLES = ("tasks", "schedules")  # sections whose keys are names the user chose


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Server:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One entry of [tasks]: what to call, its own time limit (None: the
    pool's job_timeout; 0: none), its dedicated children (None: it is
    served by the pool's shared children), and what becomes of its jobs
    beyond one attempt (jobs/policy.py)."""

    call: str = ""
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    max_output: int = DEFAULT_MAX_OUTPUT
    timeout: float | None = None
    processes: int | None = None
    retries: int = 0
    retry_delay: float = 10.0
    retry_max_delay: float = 3600.0
    keep_results: float = 0.0
    concurrency: int = 0
    rate: str = ""

    @property
    def lifecycle(self) -> bool:
        """Its jobs leave records in Redis (retries or results)."""
        return bool(self.retries or self.keep_results)

    @property
    def governed(self) -> bool:
        """Fleet-wide limits apply to it (taskctl/governor.py)."""
        return bool(self.concurrency or self.rate)

    @property
    def starts_per_second(self) -> float:
        """`rate` as jobs per second (0: unlimited)."""
        if not self.rate:
            return 0.0
        count, _, unit = self.rate.partition("/")
        return int(count) / RATE_UNITS[unit]


@dataclasses.dataclass
class Config:
    servers: list[Server]
    connect_timeout: float
    poll_timeout: float
    name: str
    hostname: str
    processes: int
    min_processes: int | None
    max_processes: int | None
    scale_down_after: float
    state_dir: Path
    spool_dir: Path | None
    pidfile: Path
    graceful_timeout: float
    job_timeout: float
    kill_grace: float
    max_jobs: int
    max_age: float
    max_memory: int
    heartbeat_timeout: float
    poison_kills: int
    long_job_warning: float
    upgrade_timeout: float
    log_level: str
    log_format: str
    log_file: Path | None
    python_path: list[str]
    preload: str | None
    tasks: dict[str, TaskSpec]
    schedules: dict[str, Schedule]
    redis_url: str | None
    channel: str
    secret_file: Path | None
    max_message_age: float
    key_prefix: str
    allow_unsigned: bool
    metrics_listen: Server | None
    hook_post_fork: str | None
    hook_before_job: str | None
    hook_after_job: str | None
    hook_on_failure: str | None
    hook_child_exit: str | None
    hook_master_ready: str | None
    hook_master_exit: str | None
    hook_exit_timeout: float
    source: Path | None = None
    args: argparse.Namespace | None = dataclasses.field(default=None, repr=False)

    def hook_specs(self) -> dict[str, str | None]:
        """[hooks]: hook name -> "module:callable" (None: not set)."""
        return {option.key: getattr(self, option.dest) for option in OPTIONS
                if option.section == "hooks" and option.key != "exit_timeout"}

    @property
    def processes_file(self) -> Path:
        return self.state_dir / f"{self.name}.state.json"

    @property
    def runtime_file(self) -> Path:
        return self.state_dir / f"{self.name}.runtime.json"

    @property
    def autoscaling(self) -> bool:
        return self.max_processes is not None

    def bounds(self) -> tuple[int, int]:
        """(min_processes, max_processes) of an autoscaling pool (checked at load: both or neither)."""
        if self.min_processes is None or self.max_processes is None:
            raise ConfigError("[pool] min_processes and max_processes: this pool does not autoscale")
        return self.min_processes, self.max_processes

    def dedicated(self) -> dict[str, int]:
        """Tasks with children of their own: name -> how many."""
        return {name: spec.processes for name, spec in self.tasks.items() if spec.processes}

    def groups(self, shared: int) -> dict[str | None, int]:
        """Children wanted per group: SHARED ones (None, if any task is
        shared), and each task's dedicated ones."""
        wanted: dict[str | None, int] = {None: shared} if self.shared_tasks() else {}
        return wanted | self.dedicated()

    def shared_tasks(self) -> list[str]:
        """Tasks the pool's shared children register (all but the dedicated ones)."""
        return [name for name, spec in self.tasks.items() if not spec.processes]

    def time_limit(self, task: str) -> float:
        """Seconds TASK may run (0: no limit)."""
        own = self.tasks[task].timeout
        return self.job_timeout if own is None else own


# --- value parsers: each takes the raw value and returns the typed one, or
# raises ValueError with a short description of what was expected.


def _server(text: str) -> Server:
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port from 1 to 65535, got {text!r}")
    return Server(host.strip("[]"), int(port))


def _servers(value: Any) -> list[Server]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a non-empty list of host:port")
    servers = [_server(item) for item in items if str(item).strip()]
    if not servers:
        raise ValueError("expected at least one host:port")
    if len(servers) > MAX_SERVERS:
        raise ValueError(f"expected at most {MAX_SERVERS} servers, got {len(servers)}")
    return servers


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not re.fullmatch(r"-?\d+", str(value).strip()):
            raise ValueError(f"expected a whole number, got {value!r}")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {number}")
        return number

    return parse


def _seconds_or_off(value: Any) -> float:
    """Seconds, where 0 means 'off'."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= number <= 86400:
        raise ValueError(f"expected seconds from 0 to 86400, got {value!r}")
    return number


def _seconds(value: Any) -> float:
    number = _seconds_or_off(value)
    if number == 0:
        raise ValueError(f"expected seconds greater than 0 (at most 86400), got {value!r}")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1"):
        return True
    if str(value).lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"expected 1-64 letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapper(value: Any) -> Any:
        return None if value in ("", None) else parse(value)

    return wrapper


def _path(value: Any) -> Path:
    return Path(_text(value))


def _paths(value: Any) -> list[str]:
    items = value.split(os.pathsep) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError("expected a list of directories")
    return [_text(item) for item in items]


def _log_level(value: Any) -> str:
    level = str(value).lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def _listen(value: Any) -> Server:
    address = _server(value)
    if address.host in ("*", ""):
        raise ValueError(f"expected an address to listen on (0.0.0.0 for every one), got {value!r}")
    return address


def callable_spec(value: Any) -> str:
    """'package.module:function' (the form of --task and --preload)."""
    if not isinstance(value, str) or not _SPEC_RE.match(value.strip()):
        raise ValueError(f"expected module:callable, got {value!r}")
    return value.strip()


MAX_RETRIES = 100
MAX_OUTPUT = 1024 * 1024 * 1024
MAX_KEEP_RESULTS = 90 * 86400

# Each key of a task's table: (key, meaning). The reference page is made from it.
TASK_KEYS: tuple[tuple[str, str], ...] = (
    ("call", "`module:callable`, imported once in the master before the fork"),
    ("command", 'or: an executable and its arguments, run for each job: `["/usr/local/bin/resize", "-w", "100"]` '
                "(no shell; docs/command-tasks.md)"),
    ("env", "a command's environment on top of the pool's: a table of strings"),
    ("cwd", "the directory a command starts in (default: the pool's)"),
    ("max_output", f"the most bytes a command's stdout may give (default {DEFAULT_MAX_OUTPUT}: 16 MiB)"),
    ("timeout", "the task's own time limit in seconds (0: none); default: `[pool] job_timeout`"),
    ("processes", "children of its own that register only this task (it leaves the shared children)"),
    ("retries", f"how many times a failed job is run again, 0 to {MAX_RETRIES} (default 0: never; "
                "needs `[control] redis_url`)"),
    ("retry_delay", "seconds before the first retry (default 10); each next one waits twice as long, "
                    "with up to 10 % jitter"),
    ("retry_max_delay", "the longest wait between two runs, in seconds (default 3600)"),
    ("keep_results", "seconds each job's record and result stay in Redis (default 0: none kept)"),
    ("concurrency", "at most this many of its jobs run at once across every pool sharing the Redis "
                    "(default 0: no limit; needs `[control] redis_url`)"),
    ("rate", 'at most this many of its jobs start per second, minute or hour across the fleet: "100/m" '
             '(default: no limit; needs `[control] redis_url`)'),
)
RATE_UNITS = {"s": 1, "m": 60, "h": 3600}
RATE_RE = re.compile(r"([1-9][0-9]{0,8})/([smh])")


def _rate(value: Any) -> str:
    text = _text(value).strip()
    if not RATE_RE.fullmatch(text):
        raise ValueError(f'expected COUNT/UNIT with a unit of s, m or h ("100/m"), got {text!r}')
    return text


def _task(value: Any) -> TaskSpec:
    if not isinstance(value, dict):
        return TaskSpec(callable_spec(value))
    known = [key for key, _ in TASK_KEYS]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (expected {', '.join(known)})")
    if ("call" in value) == ("command" in value):
        raise ValueError('a table needs call = "module:callable" or command = ["program", "arg"...], one of them')
    if "command" not in value and ({"env", "cwd", "max_output"} & set(value)):
        raise ValueError("env, cwd and max_output are a command's")
    parsed: dict[str, Any] = {}
    for key, parse in (("timeout", _seconds_or_off), ("processes", _int_range(1, MAX_PROCESSES)),
                       ("retries", _int_range(0, MAX_RETRIES)), ("retry_delay", _seconds),
                       ("retry_max_delay", _seconds), ("keep_results", _int_range(0, MAX_KEEP_RESULTS)),
                       ("concurrency", _int_range(0, MAX_CONCURRENCY)), ("rate", _rate), ("command", _command),
                       ("env", _environment), ("cwd", _text), ("max_output", _int_range(1, MAX_OUTPUT))):
        if key in value:
            try:
                parsed[key] = parse(value[key])
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
    spec = TaskSpec(callable_spec(value["call"]) if "call" in value else "", **parsed)
    if spec.retry_max_delay < spec.retry_delay:
        raise ValueError(f"retry_max_delay ({spec.retry_max_delay:g}) is below retry_delay ({spec.retry_delay:g})")
    return spec


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(arg, str) and "\0" not in arg for arg in value):
        raise ValueError(f'expected a list of strings, the program first: ["tr", "a-z", "A-Z"], got {value!r}')
    if not value[0]:
        raise ValueError("the program's name is empty")
    return tuple(value)


def _environment(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()) or \
            not all(k and "=" not in k and "\0" not in k + v for k, v in value.items()):
        raise ValueError(f'expected a table of NAME = "value" (no = in a name), got {value!r}')
    return tuple(sorted(value.items()))


def _tasks(value: Any) -> dict[str, TaskSpec]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of NAME = \"module:callable\" or "
                         "NAME = { call = ..., timeout = ..., processes = ... }")
    tasks = {}
    for name, spec in value.items():
        if not name or any(c.isspace() or c == "\0" for c in name):
            raise ValueError(f"task name {name!r} is empty or has white space")
        try:
            tasks[name] = _task(spec)
        except ValueError as err:
            raise ValueError(f"task {name!r}: {err}") from None
    return tasks


def redis_url(value: Any) -> str:
    """A Redis URL as redis-py will read it, checked now: a typo is one line
    at start, not a traceback a second in the control thread."""
    url = _text(value)
    shown = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)  # never the password
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {shown!r}")
    from redis.connection import parse_url  # here: a pool without fleet control never loads redis

    try:
        parsed = parse_url(url)
    except ValueError as err:
        raise ValueError(f"{shown!r} is not a Redis URL redis-py can use: {err}") from None
    database = urllib.parse.urlsplit(url).path.strip("/")
    if not url.startswith("unix://") and database and not database.isdigit():
        raise ValueError(f"{shown!r}: the database after the last / must be a number, got {database!r}")
    if not url.startswith("unix://") and not parsed.get("host"):
        raise ValueError(f"{shown!r} names no host")
    return url


@dataclasses.dataclass(frozen=True)
class Option:
    section: str
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    field: str = ""

    @property
    def dest(self) -> str:
        return self.field or self.key

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("gearman", "servers", _servers, "127.0.0.1:4730", "gearmand servers, host:port[,host:port...]"),
    Option("gearman", "connect_timeout", _seconds, 5.0, "seconds to wait for a gearmand connection"),
    Option("gearman", "poll_timeout", _seconds, 5.0, "longest idle wait before a child checks on its master"),
    Option("pool", "name", _name, "default", "pool name (several pools may run on one host)"),
    Option("pool", "hostname", _name, None, "host name the pool answers to (default: this host's)"),
    Option("pool", "processes", _int_range(1, MAX_PROCESSES), None,
           "number of shared children (default: CPU count; with autoscaling: where it starts, default min)"),
    Option("pool", "min_processes", _int_range(1, MAX_PROCESSES), None,
           "autoscaling (with max_processes): never fewer shared children than this"),
    Option("pool", "max_processes", _int_range(1, MAX_PROCESSES), None,
           "autoscaling (with min_processes): never more shared children than this"),
    Option("pool", "scale_down_after", _seconds, 60.0,
           "autoscaling: seconds without a waiting job before idle children leave, one at a time"),
    Option("pool", "state_dir", _path, "/run/gearman-workers", "directory for PID and state files"),
    Option("pool", "spool_dir", _optional(_path), None,
           "directory where failed runs of tasks with retries wait for Redis, in NAME.spool (default: state_dir; "
           "on a disk that outlives a reboot, or a reboot during a Redis outage loses them)"),
    Option("pool", "pidfile", _path, None, "PID file (default: STATE_DIR/NAME.pid)"),
    Option("pool", "graceful_timeout", _seconds, 30.0, "seconds a stopping child may finish its job"),
    Option("pool", "job_timeout", _seconds_or_off, 0.0,
           "time limit of one job in seconds (0: none; a task's own timeout wins)"),
    Option("pool", "kill_grace", _seconds, 5.0,
           "seconds after the time limit before a child that did not give up is killed"),
    Option("pool", "max_jobs", _int_range(0, 10**9), 0, "recycle a child after about this many jobs (0: never)"),
    Option("pool", "max_age", _seconds_or_off, 0.0, "recycle a child after about this many seconds (0: never)"),
    Option("pool", "max_memory", _int_range(0, 10**7), 0,
           "recycle a child whose RSS is above this many MiB after a job (0: never)"),
    Option("pool", "heartbeat_timeout", _seconds_or_off, 30.0,
           "kill and replace a child silent this many seconds (0: never; above poll and connect timeouts)"),
    Option("pool", "poison_kills", _int_range(0, 1000), 2,
           "fail a job instead of running it again once its runs killed this many children (0: never)"),
    Option("pool", "long_job_warning", _seconds_or_off, 300.0,
           "log once when a job has been running this many seconds (0: never)"),
    Option("pool", "upgrade_timeout", _seconds, 60.0,
           "seconds a new master started by an upgrade (SIGUSR2, --upgrade) may take to register its children"),
    Option("pool", "log_level", _log_level, "info", "debug, info, warning or error"),
    Option("pool", "log_format", _log_format, "text",
           "text, or json (one object per line, for log shippers)"),
    Option("pool", "log_file", _optional(_path), None, "log file (with --daemon; default: STATE_DIR/NAME.log)"),
    Option("pool", "python_path", _paths, [], "directories added to sys.path before tasks load"),
    Option("pool", "preload", _optional(callable_spec), None, "module:callable run once before forking"),
    Option("tasks", "", _tasks, {}, "", field="tasks"),
    Option("schedules", "", parse_schedules, {}, "", field="schedules"),
    Option("control", "redis_url", _optional(redis_url), None, "Redis URL for fleet control (empty: off)"),
    Option("control", "channel", _name, "gearman-workers", "Redis pub/sub channel for commands"),
    Option("control", "secret_file", _optional(_path), None, "file with the shared secret for signed commands"),
    Option("control", "max_message_age", _seconds, 60.0, "signed commands older than this are rejected"),
    Option("control", "key_prefix", _name, "gearman-workers", "prefix of every Redis key the pools use"),
    Option("control", "allow_unsigned", _bool, False,
           "accept unsigned commands (without secret_file): anyone who can publish controls the pool"),
    Option("metrics", "listen", _optional(_listen), None,
           "HOST:PORT to serve Prometheus metrics on (empty: off)", field="metrics_listen"),
    Option("hooks", "post_fork", _optional(callable_spec), None,
           "called as (worker) in each new child before it registers (docs/hooks.md)", field="hook_post_fork"),
    Option("hooks", "before_job", _optional(callable_spec), None,
           "called as (worker, job) before each job", field="hook_before_job"),
    Option("hooks", "after_job", _optional(callable_spec), None,
           "called as (worker, job, outcome) after each job's answer: done, failed, timeout, cancelled, poison",
           field="hook_after_job"),
    Option("hooks", "on_failure", _optional(callable_spec), None,
           "called as (worker, job, exception) when a task raised", field="hook_on_failure"),
    Option("hooks", "child_exit", _optional(callable_spec), None,
           "called as (worker, reason) before a child leaves gracefully: recycled or stopped",
           field="hook_child_exit"),
    Option("hooks", "master_ready", _optional(callable_spec), None,
           "called as (pool) in the master once every child is registered", field="hook_master_ready"),
    Option("hooks", "master_exit", _optional(callable_spec), None,
           "called as (pool) in the master as it leaves, after its children", field="hook_master_exit"),
    Option("hooks", "exit_timeout", _seconds, 5.0,
           "seconds child_exit and master_exit may take; then they are interrupted", field="hook_exit_timeout"),
)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def _file_values(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Flatten the TOML tables to {dest: raw value}, refusing unknown keys."""
    known = {(o.section, o.key): o for o in OPTIONS}
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section in NAMED_TABLES:
            values[section] = table
            continue
        if not isinstance(table, dict) or section not in {o.section for o in OPTIONS}:
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, value in table.items():
            values[_known(known, path, section, key).dest] = value
    return values


def _known(known: dict[tuple[str, str], Option], path: Path, section: str, key: str) -> Option:
    option = known.get((section, key))
    if option is None:
        close = difflib.get_close_matches(key, [o.key for o in OPTIONS if o.section == section], 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{path}: unknown key [{section}] {key}{hint}")
    return option


def load_control(path: Path) -> dict[str, Any]:
    """The [control] table of PATH alone, checked (gm-exit and gm-ctl: what
    the file says of the pool is the pool's business)."""
    table = _read_toml(path).get("control", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [control] must be a table")
    known = {(o.section, o.key): o for o in OPTIONS if o.section == "control"}
    for key in table:
        _known(known, path, "control", key)
    values: dict[str, Any] = {}
    for (_, key), option in known.items():
        raw = table.get(key, option.default)
        try:
            values[key] = None if raw is None else option.parse(raw)
        except ValueError as err:
            raise ConfigError(f"{path}: [control] {key}: {err}") from None
    if values["secret_file"] is not None:
        values["secret_file"] = values["secret_file"].absolute()  # as the pool reads it (see _complete)
    return values


# Defaults the code derives at load time (_complete), said in words.
DERIVED_DEFAULTS = {"processes": "CPU count", "hostname": "this host's short name", "pidfile": "STATE_DIR/NAME.pid"}


def default_text(option: Option) -> str:
    """OPTION's default as --help and the reference page say it."""
    value = option.default
    if value is None:
        return DERIVED_DEFAULTS.get(option.key, "(none)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _metavar(option: Option) -> str:
    """The flag's value, named with its unit where it has one."""
    if option.parse in (_seconds, _seconds_or_off):
        return "SECONDS"
    return "MIB" if option.key == "max_memory" else option.dest.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per key, grouped by its TOML table, with its default and
    unit; --task and --python-path may repeat."""
    parser.add_argument("--config", type=Path, help="TOML configuration file (flags win over it)")
    sections = dict.fromkeys(option.section for option in OPTIONS)
    groups = {section: parser.add_argument_group(f"[{section}]") for section in sections}
    for option in OPTIONS:
        group = groups[option.section]
        text = f"{option.help} (default: {default_text(option)})"
        if option.dest == "schedules":
            continue  # a table of tables: in the file only
        if option.dest == "tasks":
            group.add_argument("--task", action="append", metavar="NAME=module:callable",
                               help="register a task (repeatable)")
        elif option.dest == "python_path":
            group.add_argument(option.flag, action="append", metavar="DIR", help=text)
        elif option.parse is _bool:
            group.add_argument(option.flag, action="store_const", const=True, help=text)
        else:
            group.add_argument(option.flag, metavar=_metavar(option), help=text)


def to_toml(config: Config) -> str:
    """CONFIG as a TOML file that loads back to it (gearman-workers
    --print-config): every key, flags and file merged. A password in the
    Redis URL is shown as ***."""
    lines: list[str] = []
    for section in dict.fromkeys(o.section for o in OPTIONS if o.dest not in NAMED_TABLES):
        lines.append(f"[{section}]")
        for option in (o for o in OPTIONS if o.section == section):
            value = getattr(config, option.dest)
            if option.dest == "redis_url" and value:
                value = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", value)
            lines.append(f"{option.key} = {_toml_value(value)}" if value is not None
                         else f"# {option.key} = (not set)")
        lines.append("")
    lines.append("[tasks]")
    for name, spec in config.tasks.items():
        given = {key: getattr(spec, key) for key, _ in TASK_KEYS if getattr(spec, key) != getattr(TaskSpec, key, None)}
        given["env"] = dict(spec.env) if spec.env else None
        table = ", ".join(f"{k} = {_toml_value(v)}" for k, v in given.items() if v is not None)
        lines.append(f"{_toml_value(name)} = {{ {table} }}")
    if config.schedules:
        lines += ["", "[schedules]"]
    for name, schedule in config.schedules.items():
        table = ", ".join(f"{key} = {_toml_value(value)}" for key, value in schedule.definition().items())
        lines.append(f"{_toml_value(name)} = {{ {table} }}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    values = {o.dest: getattr(args, o.dest) for o in OPTIONS
              if o.dest not in NAMED_TABLES and getattr(args, o.dest, None) is not None}
    for item in getattr(args, "task", None) or ():
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"--task {item!r}: expected NAME=module:callable")
        tasks = values.setdefault("tasks", {})
        if name.strip() in tasks:
            logging.getLogger("gearman_workers").warning(
                "gearman-workers: --task %s given twice; the last one (%s) wins", name.strip(), spec)
        tasks[name.strip()] = spec
    return values


def _writable_dir(path: Path, where: str) -> None:
    """PATH is a directory we may write in, or one we can create."""
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ConfigError(f"{where}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{where}: {path} cannot be a directory: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "is not writable" if probe == path else f"cannot be created ({probe} is not writable)"
        raise ConfigError(f"{where}: {path} {verb}")


def check_control(config: Config) -> None:
    """A pool that listens for commands takes only signed ones, unless told
    in so many words to take anyone's."""
    if config.redis_url and config.secret_file is None and not config.allow_unsigned:
        raise ConfigError("[control] secret_file: required with redis_url, so that only holders of the "
                          "secret can stop or change the pool (or set allow_unsigned = true to accept "
                          "unsigned commands from anyone who can publish on the channel)")


def check_paths(config: Config) -> None:
    """Before anything is created: can the pool write where it must?"""
    _writable_dir(config.state_dir, "[pool] state_dir")
    _writable_dir(config.pidfile.parent, "[pool] pidfile")
    if config.pidfile.is_dir():
        raise ConfigError(f"[pool] pidfile: {config.pidfile} is a directory")
    # Checked, now made: a place that passes the checks and still cannot be
    # made (a read-only or virtual file system) is said against its key.
    for directory, where in ((config.state_dir, "[pool] state_dir"), (config.pidfile.parent, "[pool] pidfile")):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{where}: cannot create {directory}: {err.strerror or err}") from None


def check_limits(config: Config, idle_bytes: int) -> None:
    """Limits that cannot work, against what an idle child already holds
    (IDLE_BYTES: the master's resident memory once the tasks are loaded)."""
    if config.max_memory and config.max_memory * 1024 * 1024 <= idle_bytes:
        raise ConfigError(f"[pool] max_memory: {config.max_memory} MiB is below what an idle child holds "
                          f"already (about {idle_bytes // (1024 * 1024)} MiB): every child would be replaced "
                          f"after every job; raise it, or 0 for no limit")


def _section_label(option: Option) -> str:
    return f"[{option.section}]" + (f" {option.key}" if option.key else "")


def load(args: argparse.Namespace | None = None, path: Path | None = None,
         require_tasks: bool = True) -> Config:
    """Build the Config from an optional file and optional parsed flags."""
    path = path or (getattr(args, "config", None) if args else None)
    raw: dict[str, Any] = _file_values(_read_toml(path), path) if path else {}
    cli = _cli_values(args) if args is not None else {}
    if "tasks" in cli:
        cli["tasks"] = {**raw.get("tasks", {}), **cli["tasks"]}
    raw.update(cli)
    parsed: dict[str, Any] = {}
    for option in OPTIONS:
        value = raw.get(option.dest, option.default)
        if value is None:
            parsed[option.dest] = None
            continue
        try:
            parsed[option.dest] = option.parse(value)
        except ValueError as err:
            if option.dest in cli:
                where = "--task" if option.dest == "tasks" else option.flag
            else:
                where = f"{path}: {_section_label(option)}" if path else _section_label(option)
            raise ConfigError(f"{where}: {err}") from None
    config = _complete(parsed, path, require_tasks)
    config.args = args
    return config


def _complete(values: dict[str, Any], source: Path | None, require_tasks: bool) -> Config:
    _check_autoscaling(values)
    if values["processes"] is None:
        values["processes"] = values["min_processes"] or os.cpu_count() or 1
    if values["hostname"] is None:
        values["hostname"] = socket.gethostname().split(".")[0] or "localhost"
    if values["pidfile"] is None:
        values["pidfile"] = values["state_dir"] / f"{values['name']}.pid"
    # Absolute from here on: --daemon moves the process to /, and the PID
    # file and log are written after that.
    for key in ("state_dir", "spool_dir", "pidfile", "log_file", "secret_file"):
        if values[key] is not None:
            values[key] = values[key].absolute()
    if require_tasks and not values["tasks"]:
        raise ConfigError("[tasks]: no task configured (add a [tasks] table or --task NAME=module:callable)")
    keeping = [name for name, spec in values["tasks"].items() if spec.lifecycle]
    if keeping and not values["redis_url"]:
        raise ConfigError(f"[tasks] {keeping[0]}: retries and keep_results keep their records in Redis; "
                          "set [control] redis_url")
    if values["schedules"] and not values["redis_url"]:
        raise ConfigError(f"[schedules] {next(iter(values['schedules']))}: schedules are fired by the fleet's "
                          "jobs leader through Redis; set [control] redis_url")
    governed = [name for name, spec in values["tasks"].items() if spec.governed]
    if governed and not values["redis_url"]:
        raise ConfigError(f"[tasks] {governed[0]}: concurrency and rate are shared by the fleet through Redis; "
                          "set [control] redis_url")
    _check_heartbeat_timeout(values)
    if source is not None:
        # Relative python_path entries are relative to the config file.
        base = source.resolve().parent
        values["python_path"] = [str(base / p) for p in values["python_path"]]
    return Config(**values, source=source)


def _check_autoscaling(values: dict[str, Any]) -> None:
    low, high, start = values["min_processes"], values["max_processes"], values["processes"]
    if (low is None) != (high is None):
        given, missing = ("min_processes", "max_processes") if high is None else ("max_processes", "min_processes")
        raise ConfigError(f"[pool] {given}: autoscaling needs {missing} too")
    if low is not None and low > high:
        raise ConfigError(f"[pool] min_processes: {low} is above max_processes {high}")
    if low is not None and start is not None and not low <= start <= high:
        raise ConfigError(f"[pool] processes: {start} is outside min_processes {low} .. max_processes {high}")
    dedicated = sum(spec.processes or 0 for spec in values["tasks"].values())
    if (high or start or 0) + dedicated > MAX_PROCESSES:
        raise ConfigError(f"[tasks]: {dedicated} dedicated children and up to {high or start} shared ones "
                          f"are more than {MAX_PROCESSES}")
    if low is not None and values["tasks"] and all(spec.processes for spec in values["tasks"].values()):
        raise ConfigError("[pool] min_processes: every task has dedicated children; nothing is left to autoscale")


def _check_heartbeat_timeout(values: dict[str, Any]) -> None:
    """An idle child beats once per poll_timeout, and may wait up to
    connect_timeout on gearmand: a shorter heartbeat_timeout kills healthy children."""
    timeout = values["heartbeat_timeout"]
    for key in ("poll_timeout", "connect_timeout"):
        if timeout and timeout <= values[key]:
            raise ConfigError(f"[pool] heartbeat_timeout: must be longer than [gearman] {key} "
                              f"({values[key]:g} s), got {timeout:g}")


def reload(config: Config) -> Config:
    """Re-read the file a running pool was started with (for SIGHUP); the
    flags given at start still override it."""
    fresh = load(config.args, config.source)
    # What identifies the running pool cannot change under it.
    for field in ("name", "state_dir", "pidfile"):
        setattr(fresh, field, getattr(config, field))
    return fresh


