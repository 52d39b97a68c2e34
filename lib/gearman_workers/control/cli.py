"""gm-exit and gm-ctl: the operator's side of the control channel."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from .. import config as configuration
from ..log import escape
from . import data, exit, registry, scale, store
from .client import connect, read_secret
from .messages import BadMessage, Message, decode, encode

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclasses.dataclass
class Settings:
    url: str
    channel: str
    prefix: str
    secret: bytes | None
    source: Path | None = None  # the configuration file they came from


def connection_options(after_subcommand: bool = False) -> argparse.ArgumentParser:
    """The connection flags; gm-ctl takes them before or after its subcommand.
    After it, a flag left out must not overwrite one given before it (argparse
    applies a subparser's defaults last), hence SUPPRESS there."""
    default = argparse.SUPPRESS if after_subcommand else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection (default: from --config, else local Redis)")
    group.add_argument("--config", type=Path, default=default,
                       help=f"a configuration file's [control] table (default: the operator's, {OPERATOR_CONFIG}, "
                       "where it exists; a pool's own file has the pool's Redis user, which may not send commands)")
    group.add_argument("--redis-url", default=default, help="redis://[user:password@]host:port/db, rediss:// for TLS")
    group.add_argument("--channel", default=default, help="control channel (default gearman-workers)")
    group.add_argument("--secret-file", type=Path, default=default, help="shared secret to sign commands with")
    group.add_argument("--key-prefix", default=default, help="prefix of the Redis keys (default gearman-workers)")
    return parent


def target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", action="append", default=[], metavar="HOST",
                        help="only pools on this host (repeatable; default: every host)")
    parser.add_argument("--pool", help="only pools with this name (default: every pool)")


OPERATOR_CONFIG = Path("/etc/gearman-workers/control.toml")


def settings(args: argparse.Namespace) -> Settings:
    """Flags, else the config file's [control] table (by default the one the
    deployment writes for operators, if present), else the defaults."""
    path = args.config or (OPERATOR_CONFIG if OPERATOR_CONFIG.exists() else None)
    base = configuration.load(path=path, require_tasks=False) if path else None
    url = args.redis_url or (base.redis_url if base else None) or "redis://127.0.0.1:6379/0"
    secret_file = args.secret_file or (base.secret_file if base else None)
    return Settings(
        url=url,
        channel=args.channel or (base.channel if base else "gearman-workers"),
        prefix=args.key_prefix or (base.key_prefix if base else "gearman-workers"),
        secret=read_secret(secret_file) if secret_file else None,
        source=path,
    )


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def _redis_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def publish(client: redis.Redis, conf: Settings, message: Message) -> int:
    """Stamp, sign, keep (where its command keeps it) and publish MESSAGE."""
    message = dataclasses.replace(message, ts=_redis_time(client))
    command = registry.command_of(message)
    raw = encode(message, conf.secret)
    keys = store.Keys(conf.prefix)
    with client.pipeline(transaction=False) as pipe:  # no MULTI: operators need no such right
        for scope in store.command_scopes(message.hosts, message.pool):
            command.record(pipe, keys, scope, message, raw)
        pipe.publish(conf.channel, raw)
        return int(pipe.execute()[-1])


def _pool_id(info: dict[str, Any]) -> str:
    return f"{info.get('host')}/{info.get('name')}"


def _targeted(pools: list[dict[str, Any]], hosts: list[str], pool: str | None) -> dict[str, dict[str, Any]]:
    probe = Message("", hosts=tuple(hosts), pool=pool)
    return {_pool_id(p): p for p in pools if probe.targets(str(p.get("host")), str(p.get("name")))}


def _wait_stopped(client: redis.Redis, keys: store.Keys, before: dict[str, dict[str, Any]],
                  timeout: float) -> int:
    if not before:
        print("no live pool matched the targets; nothing to wait for")
        return EXIT_OK
    print(f"waiting for {len(before)} pool(s): {', '.join(sorted(before))}")
    started = time.monotonic()
    remaining = dict(before)
    while remaining:
        now_live = {_pool_id(p): p for p in store.live_pools(client, keys)}
        for pool_id, old in list(remaining.items()):
            new = now_live.get(pool_id)
            if new is None or (new.get("pid"), new.get("started")) != (old.get("pid"), old.get("started")):
                del remaining[pool_id]
                print(f"  {pool_id} stopped after {time.monotonic() - started:.1f} s "
                      f"({len(before) - len(remaining)}/{len(before)})", flush=True)
        if remaining and time.monotonic() - started > timeout:
            print(f"timed out after {timeout:.0f} s; still running: {', '.join(sorted(remaining))}",
                  file=sys.stderr)
            return EXIT_FAILED
        if remaining:
            time.sleep(0.2)
    return EXIT_OK


def exit_main(argv: list[str] | None = None) -> int:
    prog = "gm-exit"
    parser = argparse.ArgumentParser(
        prog=prog, parents=[connection_options()],
        description="Tell gearman-workers pools to finish the jobs in hand and exit "
        "(under systemd they come back with fresh code).")
    target_options(parser)
    parser.add_argument("--wait", action="store_true", help="wait until every targeted pool has stopped")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)")
    args = parser.parse_args(argv)
    conf: Settings | None = None
    try:
        conf = settings(args)
        client = connect(conf.url)
        keys = store.Keys(conf.prefix)
        before = _targeted(store.live_pools(client, keys), args.host, args.pool) if args.wait else {}
        receivers = publish(client, conf, exit.message(hosts=tuple(args.host), pool=args.pool))
    except configuration.ConfigError as err:
        return _fail(prog, f"config error: {err}", EXIT_USAGE)
    except (redis.RedisError, OSError) as err:
        return _fail(prog, _redis_problem(err, conf), EXIT_FAILED)
    assert conf is not None
    print(f"exit published on {conf.channel}: received by {receivers} listener(s)")
    if not args.wait:
        return EXIT_OK
    try:
        return _wait_stopped(client, keys, before, args.timeout)
    except (redis.RedisError, OSError) as err:
        return _fail(prog, f"lost redis while waiting: {err}", EXIT_FAILED)


def ctl_main(argv: list[str] | None = None) -> int:
    prog = "gm-ctl"
    common = connection_options(after_subcommand=True)
    parser = argparse.ArgumentParser(prog=prog, parents=[connection_options()],
                                     description="Control gearman-workers pools through Redis.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (text, arguments, targeted) in SUBCOMMAND_ARGUMENTS.items():
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        for flag, options in arguments:
            sub.add_argument(flag, **options)
        if targeted:
            target_options(sub)
    args = parser.parse_args(argv)
    conf: Settings | None = None
    try:
        conf = settings(args)
        client = connect(conf.url)
        return _ctl(prog, args, conf, client)
    except configuration.ConfigError as err:
        return _fail(prog, f"config error: {err}", EXIT_USAGE)
    except (redis.RedisError, OSError) as err:
        return _fail(prog, _redis_problem(err, conf), EXIT_FAILED)


def _redis_problem(err: Exception, conf: Settings | None = None) -> str:
    if isinstance(err, redis.exceptions.NoPermissionError) and conf is not None:
        return (f"redis user {_redis_user(conf.url)!r} may not do this ({err}): it is a pool's own user, whose "
                f"rights stop at what a pool needs; run operator commands with the operator's file "
                f"{OPERATOR_CONFIG} (the default where it exists) instead of {conf.source or 'these flags'}")
    if isinstance(err, redis.ResponseError):
        return f"redis refused: {err}"
    return f"cannot reach redis: {err}"


def _redis_user(url: str) -> str:
    """The ACL user a URL logs in as (Redis's "default" when it names none)."""
    credentials, at, _ = url.partition("://")[2].rpartition("@")
    user = credentials.partition(":")[0] if at else ""
    return user or "default"


def _ctl(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    return SUBCOMMANDS[args.command](prog, args, conf, client)


def _targets(args: argparse.Namespace) -> dict[str, Any]:
    return {"hosts": tuple(getattr(args, "host", ())), "pool": getattr(args, "pool", None)}


def _set(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    try:
        value = json.loads(args.value)
    except ValueError:
        return _fail(prog, f"VALUE {args.value!r} is not JSON (quote text: '\"{args.value}\"')", EXIT_USAGE)
    receivers = publish(client, conf, data.set_message(args.key, value, **_targets(args)))
    print(f"set {args.key}; {receivers} listener(s) notified")
    return EXIT_OK


def _del(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    receivers = publish(client, conf, data.del_message(args.key, **_targets(args)))
    print(f"deleted {args.key}; {receivers} listener(s) notified")
    return EXIT_OK


def _scale(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    message = scale.message(args.n, **_targets(args))
    try:
        scale.SCALE.check(message)
    except BadMessage as err:
        return _fail(prog, str(err), EXIT_USAGE)
    receivers = publish(client, conf, message)
    print(f"scale {args.n} published; received by {receivers} listener(s)")
    return EXIT_OK


def _get(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    _print_data(client, store.Keys(conf.prefix), args.key)
    return EXIT_OK


def _status(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    pools = sorted(_targeted(store.live_pools(client, store.Keys(conf.prefix)), args.host, args.pool).values(),
                   key=_pool_id)
    if args.json:
        print(json.dumps(status_document(pools), indent=2, sort_keys=True))
    else:
        _print_status(status_document(pools)["children"])
    return EXIT_OK


def _pools(prog: str, args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    _print_pools(store.live_pools(client, store.Keys(conf.prefix)))
    return EXIT_OK


SUBCOMMANDS: dict[str, Callable[[str, argparse.Namespace, Settings, redis.Redis], int]] = {
    "set": _set, "del": _del, "get": _get, "scale": _scale, "pools": _pools, "status": _status}
# name -> (what it does, its own arguments, whether --host/--pool choose the pools)
SUBCOMMAND_ARGUMENTS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]], bool]] = {
    "set": ("set runtime data KEY to a JSON VALUE",
            [("key", {}), ("value", {"help": 'a JSON value: 42, true, "text", {"a": 1}'})], True),
    "del": ("remove runtime data KEY", [("key", {})], True),
    "get": ("show the stored runtime data", [("key", {"nargs": "?"})], True),
    "scale": ("change the number of children", [("n", {"type": int})], True),
    "pools": ("list live pools from their heartbeats", [], False),
    "status": ("one row per child of every live pool: state, job, counts, memory",
               [("--json", {"action": "store_true",
                            "help": "print JSON (see docs/observability.md: fields are stable)"})], True),
}


def _print_data(client: redis.Redis, keys: store.Keys, only: str | None) -> None:
    for name in sorted(client.scan_iter(match=keys.data("*"))):
        scope = name.decode("utf-8", "replace").removeprefix(keys.data(""))
        for field, raw in sorted(client.hgetall(name).items()):
            key = store.raw_reply(field).decode("utf-8", "replace")
            if only is not None and key != only:
                continue
            try:
                message = decode(store.raw_reply(raw), None)  # shown, not obeyed: the pools check signatures
            except BadMessage as err:
                print(f"{scope:24s} {key} (unreadable: {err})")
                continue
            if message.cmd == data.SET.name:
                print(f"{scope:24s} {key} = {json.dumps(message.value)}")


def _children(info: dict[str, Any]) -> list[dict[str, Any]]:
    """A heartbeat's child rows (a master older than gm-ctl status sent a count)."""
    children = info.get("children")
    return [c for c in children if isinstance(c, dict)] if isinstance(children, list) else []


def _child_count(info: dict[str, Any]) -> int:
    children = info.get("children", 0)
    return len(children) if isinstance(children, list) else int(children or 0)


CHILD_FIELDS = ("slot", "pid", "state", "dedicated_to", "task", "job", "busy_for", "jobs_done", "jobs_failed",
                "rss", "age")
POOL_FIELDS = ("pid", "desired", "registered", "started", "reported", "autoscale")


def status_document(pools: list[dict[str, Any]]) -> dict[str, Any]:
    """What `gm-ctl status --json` prints: every pool, and every child with
    its pool's host, name and master. Values are as of the pool's last
    heartbeat (`reported`, seconds since the epoch; a few seconds old)."""
    document: dict[str, list[dict[str, Any]]] = {"pools": [], "children": []}
    for info in pools:
        where = {"host": info.get("host"), "pool": info.get("name")}
        document["pools"].append(where | {key: info.get(key) for key in POOL_FIELDS} |
                                 {"children": _child_count(info)})
        for child in _children(info):
            document["children"].append(where | {"master": info.get("pid"), "reported": info.get("reported")} |
                                        {key: child.get(key) for key in CHILD_FIELDS})
    return document


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}M"


def _print_status(children: list[dict[str, Any]]) -> None:
    """A table sized to the terminal: the job handle column goes first when narrow."""
    columns = [("HOST", "host"), ("POOL", "pool"), ("PID", "pid"), ("STATE", "state"), ("TASK", "task"),
               ("JOB", "job"), ("BUSY", "busy_for"), ("DONE", "jobs_done"), ("FAILED", "jobs_failed"),
               ("RSS", "rss"), ("AGE", "age")]
    shown = {"busy_for": _span, "age": _span, "rss": _mib}
    rows = [[escape(shown.get(key, lambda v: "-" if v is None else str(v))(child.get(key))) for _, key in columns]
            for child in children]
    widths = [max([len(title), *(len(row[i]) for row in rows)]) for i, (title, _) in enumerate(columns)]
    keep = list(range(len(columns)))
    if sum(widths) + len(widths) > shutil.get_terminal_size((100, 24)).columns:
        keep.remove(5)
    numeric = {2, 6, 7, 8, 9, 10}
    for row in [[title for title, _ in columns], *rows]:
        print(" ".join(row[i].rjust(widths[i]) if i in numeric else row[i].ljust(widths[i]) for i in keep).rstrip())
    if not children:
        print("(no live pool matched)")


def _print_pools(pools: list[dict[str, Any]]) -> None:
    print(f"{'HOST':20s} {'POOL':16s} {'PID':>7s} {'CHILDREN':>9s} {'REGISTERED':>10s} {'UP':>8s}")
    for info in sorted(pools, key=_pool_id):
        up = time.time() - float(info.get("started", time.time()))
        print(f"{info.get('host', '?'):20s} {info.get('name', '?'):16s} {info.get('pid', 0):>7} "
              f"{_child_count(info):>4}/{info.get('desired', 0):<4} {info.get('registered', 0):>10} "
              f"{up:>7.0f}s")
