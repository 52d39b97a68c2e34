"""gm-exit and gm-ctl: the operator's side of the control channel.

Every command that changes something is answered by each live pool it is
aimed at (send.py, acks.py): one line per pool, and a status that says
whether every one applied it. Commands that reach every pool on every
host (exit, scale, del) ask for --all, or a yes on a terminal."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from .. import __version__
from .. import config as configuration
from ..jobs import dead, later
from ..jobs.keys import JobKeys
from ..jobs.policy import Run
from ..jobs.results import read_record
from ..jobs.store import JobStore
from ..periodic import listing
from . import cancel, data, exit, pause, scale, store, tables
from .client import connect, read_secret
from .messages import BadMessage, Message, decode
from .send import Sender, StoredRecordRefused, refusal

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OPERATOR_CONFIG = Path("/etc/gearman-workers/control.toml")
ANSWER_TIMEOUT = 2.0  # seconds a command waits for the pools' answers by default
STOP_TIMEOUT = 120.0  # seconds gm-exit --wait waits for the pools to stop by default


@dataclasses.dataclass
class Settings:
    url: str
    channel: str
    prefix: str
    secret: bytes | None
    source: Path | None = None  # the configuration file they came from
    allow_unsigned: bool = False


class Refused(Exception):
    """The command cannot be sent as given: its line, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


# --- flags ------------------------------------------------------------------------


def _suppressed(after_subcommand: bool, default: Any) -> Any:
    """After a subcommand, a flag left out must not overwrite one given
    before it (argparse applies a subparser's defaults last): SUPPRESS."""
    return argparse.SUPPRESS if after_subcommand else default


def connection_options(after_subcommand: bool = False) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(f"connection (default: from --config, else {OPERATOR_CONFIG} where it "
                                      "exists, else a local Redis)")
    default = _suppressed(after_subcommand, None)
    group.add_argument("--config", type=Path, default=default,
                       help=f"a configuration file's [control] table (default: the operator's, {OPERATOR_CONFIG}, "
                       "where it exists; a pool's own file has the pool's Redis user, which may not send commands)")
    group.add_argument("--redis-url", default=default, help="redis://[user:password@]host:port/db, rediss:// for TLS")
    group.add_argument("--channel", default=default, help="control channel (default gearman-workers)")
    group.add_argument("--secret-file", type=Path, default=default, help="shared secret to sign commands with")
    group.add_argument("--key-prefix", default=default, help="prefix of the Redis keys (default gearman-workers)")
    group.add_argument("--allow-unsigned", action="store_true", default=_suppressed(after_subcommand, False),
                       help="send without a secret, to pools started with allow_unsigned")
    return parent


def target_options(after_subcommand: bool = False) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("which pools (default: none; --all for every pool on every host)")
    group.add_argument("--host", action="append", default=_suppressed(after_subcommand, []), metavar="HOST",
                       help="only pools on this host (repeatable)")
    group.add_argument("--pool", default=_suppressed(after_subcommand, None), help="only pools with this name")
    group.add_argument("--all", action="store_true", default=_suppressed(after_subcommand, False),
                       help="every pool on every host (exit, scale and del ask for it)")
    return parent


def answer_options(default: float = ANSWER_TIMEOUT, after_subcommand: bool = False) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--timeout", type=float, default=_suppressed(after_subcommand, None), metavar="SECONDS",
                        help=f"how long to wait for the pools' answers (default {default:g})")
    return parent


def settings(args: argparse.Namespace, sending: bool) -> Settings:
    """Flags, else the config file's [control] table (by default the one the
    deployment writes for operators, if present), else the defaults. A
    command that SENDING needs a secret, or --allow-unsigned."""
    path = args.config or (OPERATOR_CONFIG if OPERATOR_CONFIG.exists() else None)
    base = configuration.load_control(path) if path else {}
    if args.redis_url:
        try:
            configuration.redis_url(args.redis_url)
        except ValueError as err:
            raise configuration.ConfigError(f"--redis-url: {err}") from None
    secret_file = args.secret_file or base.get("secret_file")
    conf = Settings(
        url=args.redis_url or base.get("redis_url") or "redis://127.0.0.1:6379/0",
        channel=args.channel or base.get("channel") or "gearman-workers",
        prefix=args.key_prefix or base.get("key_prefix") or "gearman-workers",
        secret=read_secret(secret_file) if secret_file else None,
        source=path,
        allow_unsigned=args.allow_unsigned or bool(base.get("allow_unsigned")))
    if sending and conf.secret is None and not conf.allow_unsigned:
        raise Refused("no secret to sign with: pools that have one refuse unsigned commands; give --secret-file "
                      "(or [control] secret_file in --config), or --allow-unsigned for pools that run without one")
    return conf


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def _aimed(args: argparse.Namespace, what: str, fleet_wide_needs_all: bool) -> dict[str, Any]:
    """The targets; a command that would reach every pool on every host
    only with --all, or a yes on a terminal."""
    hosts, pool = tuple(args.host), args.pool
    if args.all and (hosts or pool):
        raise Refused("--all with --host or --pool: say one or the other")
    if fleet_wide_needs_all and not (hosts or pool or args.all) and not _confirmed(what):
        raise Refused(f"{what} would reach every pool on every host: aim it with --host or --pool, or say --all")
    return {"hosts": hosts, "pool": pool}


def _confirmed(what: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{what}: every pool on every host? [y/N] ").strip().lower() in ("y", "yes")


# --- gm-exit ------------------------------------------------------------------------


def exit_main(argv: list[str] | None = None) -> int:
    prog = "gm-exit"
    parser = argparse.ArgumentParser(
        prog=prog, parents=[connection_options(), target_options(), answer_options()],
        description="Tell gearman-workers pools to finish the jobs in hand and exit (under systemd they come back "
        "with fresh code). Each live pool aimed at answers; the status is 0 when every one obeyed. --timeout is "
        f"how long to wait for the answers (default {ANSWER_TIMEOUT:g} s), or with --wait for the answers and "
        f"then for the stop (default {STOP_TIMEOUT:g} s each).")
    parser.add_argument("--wait", action="store_true",
                        help=f"then wait until every pool aimed at has stopped (--timeout: default {STOP_TIMEOUT:g})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    return _guarded(prog, lambda read: _exit(args, read))


def _exit(args: argparse.Namespace, read: list[Settings]) -> int:
    targets = _aimed(args, exit.NAME, fleet_wide_needs_all=True)
    conf = settings(args, sending=True)
    read.append(conf)
    client = connect(conf.url)
    keys = store.Keys(conf.prefix)
    before = _targeted(store.live_pools(client, keys), **targets) if args.wait else {}
    waits = args.timeout or (STOP_TIMEOUT if args.wait else ANSWER_TIMEOUT)  # --wait: for the answers, then the stop
    status = _sender(client, conf, waits).send(exit.message(**targets))
    if args.wait:
        return max(status, _wait_stopped(client, keys, before, args.timeout or STOP_TIMEOUT))
    return status


def _guarded(prog: str, work: Callable[[list[Settings]], int]) -> int:
    """WORK's status, or one line and the status its failure means. WORK
    puts the settings it read in the list: a Redis refusal's advice names them."""
    read: list[Settings] = []
    try:
        return work(read)
    except Refused as err:
        return _fail(prog, str(err), err.status)
    except configuration.ConfigError as err:
        return _fail(prog, f"config error: {err}", EXIT_USAGE)
    except StoredRecordRefused as err:
        return _fail(prog, str(err), EXIT_FAILED)
    except (redis.RedisError, OSError) as err:
        return _fail(prog, _redis_problem(err, read[0] if read else None), EXIT_FAILED)


def _sender(client: redis.Redis, conf: Settings, timeout: float | None, force: bool = False) -> Sender:
    return Sender(client, conf.channel, store.Keys(conf.prefix), conf.secret,
                  ANSWER_TIMEOUT if timeout is None else timeout, force)


def _targeted(pools: list[dict[str, Any]], hosts: tuple[str, ...], pool: str | None) -> dict[str, dict[str, Any]]:
    probe = Message("", hosts=hosts, pool=pool)
    return {tables.pool_id(p): p for p in pools if probe.targets(str(p.get("host")), str(p.get("name")))}


def _wait_stopped(client: redis.Redis, keys: store.Keys, before: dict[str, dict[str, Any]], timeout: float) -> int:
    if not before:
        return EXIT_OK
    print(f"waiting for {len(before)} pool(s) to stop: {', '.join(sorted(before))}", flush=True)
    deadline = time.monotonic() + timeout
    remaining = dict(before)
    while remaining:
        now_live = {tables.pool_id(p): p for p in store.live_pools(client, keys)}
        for pool_id, old in list(remaining.items()):
            new = now_live.get(pool_id)
            if new is None or (new.get("pid"), new.get("started")) != (old.get("pid"), old.get("started")):
                del remaining[pool_id]
                print(f"  {pool_id} stopped ({len(before) - len(remaining)}/{len(before)})", flush=True)
        if remaining and time.monotonic() > deadline:
            print(f"timed out after {timeout:g} s; still running: {', '.join(sorted(remaining))}", file=sys.stderr)
            return EXIT_FAILED
        if remaining:
            time.sleep(0.2)
    return EXIT_OK


# --- gm-ctl -------------------------------------------------------------------------


def ctl_main(argv: list[str] | None = None) -> int:
    prog = "gm-ctl"
    parser = argparse.ArgumentParser(prog=prog, parents=[connection_options(), target_options()],
                                     description="Control gearman-workers pools through Redis. Commands that "
                                     "change something are answered by each live pool aimed at.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    after = [connection_options(after_subcommand=True), target_options(after_subcommand=True)]
    for name, (handler, text, arguments) in SUBCOMMANDS.items():
        parents = after + ([answer_options(after_subcommand=True)] if handler in SENDING else [])
        sub = commands.add_parser(name, parents=parents, help=text, description=text)
        for flag, options in arguments:
            sub.add_argument(flag, **options)
    args = parser.parse_args(argv)
    args.timeout = getattr(args, "timeout", None)
    handler = SUBCOMMANDS[args.command][0]

    def work(read: list[Settings]) -> int:
        read.append(settings(args, sending=_sends(handler, args)))
        return handler(args, read[0], connect(read[0].url))
    return _guarded(prog, work)


def _sends(handler: Handler, args: argparse.Namespace) -> bool:
    """Whether this command is sent to the pools (and so needs a secret or --allow-unsigned)."""
    if handler is _dead:
        return args.action in (dead.RETRY, dead.PURGE)  # list and show only read
    return handler in SENDING


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


def _set(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    try:
        value = json.loads(args.value)
    except ValueError:
        raise Refused(f"VALUE {args.value!r} is not JSON (quote text: '\"{args.value}\"')") from None
    message = data.set_message(args.key, value, **_aimed(args, data.SET.name, fleet_wide_needs_all=False))
    return _sender(client, conf, args.timeout, args.force).send(message)


def _del(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    message = data.del_message(args.key, **_aimed(args, data.DEL.name, fleet_wide_needs_all=True))
    return _sender(client, conf, args.timeout, args.force).send(message)


def _scale(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    if args.n == 0 and not args.allow_zero:
        raise Refused("scale 0 leaves the pools without a worker: say --allow-zero if that is what you want")
    message = scale.message(args.n, **_aimed(args, scale.NAME, fleet_wide_needs_all=True))
    try:
        scale.SCALE.check(message)
    except BadMessage as err:
        raise Refused(str(err)) from None
    return _sender(client, conf, args.timeout).send(message)


def _pause(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    message = pause.message(args.command, args.task, **_aimed(args, args.command, fleet_wide_needs_all=False))
    return _sender(client, conf, args.timeout, args.force).send(message)


def _cancel(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    """Step 1 to every pool; step 2 (a queued job, by handle) to one (see cancel.py)."""
    if args.host or args.pool or args.all:
        raise Refused("cancel finds the job in whichever pool runs it: --host, --pool and --all do not apply")
    given = [(by, job) for by, job in ((cancel.HANDLE, args.handle), (cancel.UNIQUE, args.unique),
                                       (cancel.JOB, args.job)) if job]
    if len(given) != 1:
        raise Refused("cancel: give one of --handle HANDLE, --unique UNIQUE or --job ID")
    by, job = given[0]
    try:
        cancel.CANCEL.check(cancel.message(job, by))
    except BadMessage as err:
        raise Refused(str(err)) from None
    sender = _sender(client, conf, args.timeout)
    if by == cancel.JOB:
        return _cancel_waiting(sender, client, conf, job)
    return _cancel_running(sender, job, by)


def _cancel_running(sender: Sender, job: str, by: str) -> int:
    answers = sender.ask(cancel.message(job, by))
    running = {where: ack for where, ack in answers.items()
               if ack is not None and ack.applied and ack.detail.startswith(cancel.RUNNING_HERE)}
    if running:
        sender.print_answers(running)
        return EXIT_OK
    sender.print_answers({where: ack for where, ack in answers.items() if ack is None or not ack.applied})
    answered = sorted(where for where, ack in answers.items() if ack is not None and ack.applied)
    if by == cancel.UNIQUE or not answered:
        why = ("gearmand finds no queued job by its unique: cancel a queued job by --handle" if answered
               else "no live pool answered")
        print(f"job {job} runs in no pool; {why}")
        return EXIT_FAILED
    host, pool = answered[0]
    found = sender.ask(cancel.message(job, by, queued=True, hosts=(host,), pool=pool))
    sender.print_answers(found)
    ack = found.get((host, pool))
    return EXIT_OK if ack is not None and ack.applied and ack.detail.startswith("dropped") else EXIT_FAILED


def _cancel_waiting(sender: Sender, client: redis.Redis, conf: Settings, chain: str) -> int:
    """A job of a task with retries: its run under way, or the run it waits for."""
    job_store = JobStore(client, JobKeys(conf.prefix))
    letter = job_store.letter(chain)
    if letter is not None and letter.get("state") == "running":
        return _cancel_running(sender, Run(chain, int(letter["attempts"]) + 1).unique().decode(), cancel.UNIQUE)
    hosts, pool = _jobs_pool(client, job_store, conf, "cancel --job")
    answers = sender.ask(cancel.message(chain, cancel.JOB, hosts=hosts, pool=pool))
    sender.print_answers(answers)
    return EXIT_OK if any(ack is not None and ack.applied and ack.detail.startswith(cancel.CANCELLED_JOB)
                          for ack in answers.values()) else EXIT_FAILED


def _submit(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    """A delayed job (jobs/later.py), written to Redis: the jobs leader submits it when due."""
    if args.host or args.pool or args.all:
        raise Refused("submit keeps a job for the fleet's jobs leader: --host, --pool and --all do not apply")
    if (args.payload is None) == (args.payload_file is None):
        raise Refused("submit: give PAYLOAD or --payload-file FILE, one of them")
    if (args.delay is None) == (args.at is None):
        raise Refused("submit: give --in SECONDS or --at TIME, one of them")
    payload = args.payload.encode("utf-8") if args.payload is not None else _read_payload(args.payload_file)
    try:
        chain, due = later.keep(client, JobKeys(conf.prefix), args.task, payload, args.delay,
                                _unix_time(args.at) if args.at is not None else None, args.unique, args.priority)
    except later.BadDelayedJob as err:
        raise Refused(str(err)) from None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(due))
    print(f"job {chain}: {args.task} due at {when} ({len(payload)} bytes; gm-ctl cancel --job {chain} cancels it)")
    return EXIT_OK


def _read_payload(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise Refused(f"--payload-file {path}: {err.strerror or err}") from None


def _unix_time(text: str) -> float:
    """--at: Unix seconds, or an ISO 8601 time (without a zone: this host's)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise Refused(f"--at {text!r}: expected Unix seconds or an ISO 8601 time (2026-12-24T18:00:00+01:00)") \
            from None


def _schedule(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    if args.host or args.pool or args.all:
        raise Refused("schedule list shows the schedules of the whole fleet: --host, --pool and --all do not apply")
    listing.show(listing.document(client, JobKeys(conf.prefix)), args.json)
    return EXIT_OK


def _get(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    if args.host or args.pool or args.all:
        raise Refused("get shows the data of every scope: --host, --pool and --all do not apply to it")
    shown = _print_data(client, store.Keys(conf.prefix), args.key, conf.secret)
    if args.key is not None and not shown:
        print(f"{args.key}: not set", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _status(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    pools = _live(args, conf, client)
    document = tables.status_document(pools)
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        tables.print_status(document["children"])
        tables.print_paused(pools)
    return EXIT_OK


def _pools(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    pools = _live(args, conf, client)
    if args.json:
        print(json.dumps(tables.status_document(pools)["pools"], indent=2, sort_keys=True))
    else:
        tables.print_pools(pools)
    return EXIT_OK


def _live(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> list[dict[str, Any]]:
    if args.all and (args.host or args.pool):
        raise Refused("--all with --host or --pool: say one or the other")
    found = _targeted(store.live_pools(client, store.Keys(conf.prefix)), tuple(args.host), args.pool)
    return sorted(found.values(), key=tables.pool_id)


def _dead(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    job_store = JobStore(client, JobKeys(conf.prefix))
    if args.action in ("list", "show"):
        if args.host or args.pool:
            raise Refused(f"dead {args.action} reads the dead letters of the whole fleet: --host and --pool "
                          "do not apply")
        return _show_dead(args, job_store)
    if args.host or args.pool:
        raise Refused("dead retry and purge are done by one pool for the whole fleet: --host and --pool do not apply")
    if bool(args.id) == bool(args.all):
        raise Refused(f"dead {args.action}: give one ID, or --all (with --task or --older-than to narrow it)")
    if args.id and (args.task or args.older_than is not None):
        raise Refused("--task and --older-than narrow --all; with an ID they do not apply")
    if args.action == dead.RETRY and args.older_than is not None:
        raise Refused("--older-than is for purge")
    aim = _jobs_pool(client, job_store, conf)
    message = dead.message(args.action, [args.id] if args.id else None, args.task, args.older_than, *aim)
    return _sender(client, conf, args.timeout).send(message)


def _jobs_pool(client: redis.Redis, job_store: JobStore, conf: Settings,
               what: str = "dead retry and purge") -> tuple[tuple[str, ...], str]:
    """The pool a change of the job records is sent to: the jobs leader, else any live pool."""
    live = store.live_pools(client, store.Keys(conf.prefix))
    leader = client.get(job_store.keys.leader)
    if leader is not None:
        host, pool = store.raw_reply(leader).decode("utf-8", "replace").split("/")[:2]
        if any(p.get("host") == host and p.get("name") == pool for p in live):
            return (host,), pool
    if not live:
        raise Refused(f"no live pool to make the change: {what} is done by a pool", EXIT_FAILED)
    first = sorted(live, key=tables.pool_id)[0]
    return (str(first["host"]),), str(first["name"])


def _show_dead(args: argparse.Namespace, job_store: JobStore) -> int:
    if args.action == "show":
        if not args.id or args.all or args.task or args.older_than is not None:
            raise Refused("dead show takes one ID")
        letter = job_store.letter(args.id)
        if letter is None or letter.get("state") != "dead":
            print(f"{args.id}: no such dead letter", file=sys.stderr)
            return EXIT_FAILED
        tables.print_letter(letter, args.json)
        return EXIT_OK
    if args.id:
        raise Refused("dead list takes no ID (dead show ID shows one)")
    tables.print_letters(job_store.dead_letters(args.task, args.older_than), args.json)
    return EXIT_OK


def _job(args: argparse.Namespace, conf: Settings, client: redis.Redis) -> int:
    if args.host or args.pool or args.all:
        raise Refused("job reads one job's record: --host, --pool and --all do not apply")
    found = read_record(client, JobKeys(conf.prefix), args.unique)
    if found is None:
        print(f"{args.unique}: no record (its task keeps none, or it expired: keep_results)", file=sys.stderr)
        return EXIT_FAILED
    tables.print_job(found, args.json)
    return EXIT_OK


JSON_FLAG = ("--json", {"action": "store_true", "help": "print JSON (see docs/observability.md: fields are stable)"})
FORCE_FLAG = ("--force", {"action": "store_true", "help": "replace a stored record even when it does not verify "
                          "with our secret (after a secret rotation)"})
Handler = Callable[[argparse.Namespace, Settings, redis.Redis], int]
SENDING: set[Handler] = {_set, _del, _scale, _dead, _pause, _cancel}
# name -> (handler, what it does, its own arguments)
SUBCOMMANDS: dict[str, tuple[Handler, str, list[tuple[str, dict[str, Any]]]]] = {
    data.SET.name: (_set, "set runtime data KEY to a JSON VALUE",
            [("key", {}), ("value", {"help": 'a JSON value: 42, true, "text", {"a": 1}'}), FORCE_FLAG]),
    data.DEL.name: (_del, "remove runtime data KEY", [("key", {}), FORCE_FLAG]),
    "get": (_get, "show the stored runtime data, marking what the pools ignore (exit 1: KEY not set)",
            [("key", {"nargs": "?"})]),
    scale.NAME: (_scale, "change the number of children of each pool aimed at",
              [("n", {"type": int}), ("--allow-zero", {"action": "store_true", "help": "let n be 0"})]),
    pause.PAUSE.name: (_pause, "stop offering TASK to gearmand (jobs in hand finish; new ones wait in gearmand)",
                       [("task", {}), FORCE_FLAG]),
    pause.RESUME.name: (_pause, "offer TASK to gearmand again", [("task", {}), FORCE_FLAG]),
    cancel.NAME: (_cancel, "cancel one job: a running one fails with JobCancelled, a queued one (by handle) is "
                  "dropped from gearmand, one waiting for its retry (by its job id) never runs again",
                  [("--handle", {}), ("--unique", {}), ("--job", {"metavar": "ID"})]),
    "submit": (_submit, "keep a job to be submitted later, by the fleet's jobs leader, exactly once (docs/jobs.md)",
               [("task", {}), ("payload", {"nargs": "?", "help": "text; binary or large: --payload-file"}),
                ("--in", {"dest": "delay", "type": float, "metavar": "SECONDS"}),
                ("--at", {"metavar": "TIME", "help": "Unix seconds or ISO 8601"}),
                ("--payload-file", {"type": Path, "metavar": "FILE"}), ("--unique", {}),
                ("--priority", {"choices": ["high", "normal", "low"], "default": "normal"})]),
    "schedule": (_schedule, "the periodic schedules: list (next due, last slot and who fired it, the leader)",
                 [("action", {"choices": ["list"]}), JSON_FLAG]),
    "pools": (_pools, "list live pools from their heartbeats", [JSON_FLAG]),
    "status": (_status, "one row per child of every live pool: state, job, counts, memory", [JSON_FLAG]),
    dead.NAME: (_dead, "the dead letters: list, show ID, retry ID|--all, purge ID|--all (docs/jobs.md)",
                [("action", {"choices": ["list", "show", dead.RETRY, dead.PURGE]}), ("id", {"nargs": "?"}),
                 ("--task", {"help": "only this task's"}),
                 ("--older-than", {"type": float, "metavar": "SECONDS", "help": "only those dead longer (purge)"}),
                 JSON_FLAG]),
    "job": (_job, "one job's record and result, by its unique (tasks with keep_results)",
            [("unique", {}), JSON_FLAG]),
}


def _print_data(client: redis.Redis, keys: store.Keys, only: str | None, secret: bytes | None) -> int:
    """Print the stored data (only ONLY's); how many entries were shown."""
    shown = 0
    for name in sorted(client.scan_iter(match=keys.data("*"))):
        scope = name.decode("utf-8", "replace").removeprefix(keys.data(""))
        for field, raw in sorted(client.hgetall(name).items()):
            key = store.raw_reply(field).decode("utf-8", "replace")
            if only is not None and key != only:
                continue
            shown += 1
            print(_data_line(scope, key, store.raw_reply(raw), secret))
    return shown


def _data_line(scope: str, key: str, raw: bytes, secret: bytes | None) -> str:
    try:
        message = decode(raw, None)  # read here; whether the pools accept it is the verdict below
    except BadMessage as err:
        return f"{scope:24s} {key} (unreadable: {err})"
    shown = f"= {json.dumps(message.value)}" if message.cmd == data.SET.name else "(deleted)"
    refused = refusal(raw, secret) if secret is not None else None
    ignored = str(refused) if refused is not None else None
    unchecked = "" if secret is not None else "  [not verified: no secret given]"
    return f"{scope:24s} {key} {shown}" + (f"  [pools ignore it: {ignored}]" if ignored else unchecked)
