"""The pool's end of the control channel: one thread in the master.

Why the master and not every child: one Redis connection per pool instead
of one per child, the child's job loop stays single-threaded and free of
Redis entirely, and exit/scale are the master's business anyway. Data
updates reach the children through the master's scoreboard and a runtime
file, applied between jobs.

The thread only talks to Redis and hands commands to the master's queue.
It reconnects with backoff and logs once per outage; a pool whose Redis is
down still starts and serves jobs. It checks what every message must pass
(signature, freshness, replay, older than the pool) and leaves the rest to
the message's command (registry.py): the listener is the `Pool` those act on.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from typing import Any, Protocol

import redis

from .. import inherited
from ..backoff import Backoff
from ..commands import Command as MasterCommand
from ..commands import PauseTasks, PublishData
from ..config import Config, Server
from ..gearmand_admin import cancel_job
from ..jobs.keys import JobKeys
from ..jobs.store import JobStore
from ..views import RunningJob
from . import acks, exit, pause, registry, store
from .client import connect, read_secret, redis_peers, shown_url
from .data import DataBook, stored
from .messages import NONCE_RE, BadMessage, Message, Verifier
from .messages import decode as parse


class Master(Protocol):
    """What the listener needs of the master (master.py)."""

    pid: int
    control_since: float  # commands stamped before this are not for this master
    fork_lock: threading.Lock

    def submit(self, command: MasterCommand) -> None: ...
    def summary(self) -> dict[str, Any]: ...
    def autoscales(self) -> bool: ...
    def serves(self, task: str) -> bool: ...
    def running_job(self, handle: str | None, unique: bytes | None) -> RunningJob | None: ...
    def gearmands(self) -> list[Server]: ...

log = logging.getLogger("gearman_workers.control")

HEARTBEAT_INTERVAL = 2.0  # what gm-ctl status shows is at most this old
HEARTBEAT_TTL = 15
MAX_RETRY_DELAY = 5.0
MAX_REFUSALS_ANSWERED = 20  # a second (see _answer)
DUPLICATE_WARNING_INTERVAL = 60.0
CANCEL_TIMEOUT = 2.0
START_TIMEOUT = 1.0


class ControlListener:
    def __init__(self, url: str, channel: str, prefix: str, hostname: str, pool: str,
                 secret: bytes | None, max_age: float, book: DataBook | None = None,
                 pauses: pause.PauseBook | None = None) -> None:
        self.url, self.channel, self.hostname, self.pool = url, channel, hostname, pool
        self.keys = store.Keys(prefix)
        self.secret = secret
        self.verifier = Verifier(max_age)
        self.book = book or DataBook(secret=secret)
        self._book_loaded = False
        self.pauses = pauses or pause.PauseBook(None, secret)
        self._redis_peers: frozenset[inherited.Peer] = frozenset()  # what a child blanks (forget_in_child)
        self.master: Master | None = None
        self._stop = threading.Event()
        self._resync = threading.Event()
        self._guard = threading.Lock()
        self._client: redis.Redis | None = None
        self._pubsub: Any = None  # redis-py's PubSub of the running session
        self._outage_since: float | None = None
        self.up = False  # subscribed and caught up (gearman_workers_control_up)
        # (outcome, reason) -> messages (gearman_workers_control_messages_total)
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._refusal_window = (0, 0)  # (second, refusals answered in it): see _answer
        self._last_beat = 0.0  # `reported` of our last heartbeat: a later one by another PID is a twin
        self._next_duplicate_warning = 0.0

    @classmethod
    def from_config(cls, config: Config) -> ControlListener:
        assert config.redis_url is not None
        secret = read_secret(config.secret_file) if config.secret_file else None
        return cls(config.redis_url, config.channel, config.key_prefix, config.hostname, config.name,
                   secret, config.max_message_age,
                   DataBook(config.state_dir / f"{config.name}.control.json", secret),
                   pause.PauseBook(config.state_dir / f"{config.name}.paused.json", secret))

    def initial_pauses(self) -> frozenset[str]:
        """Before the first child is forked: the tasks paused for this pool,
        from Redis if it answers at once, else as this pool last applied them."""
        self.pauses.load()
        try:  # a short wait: a pool whose Redis is away starts anyway
            client = redis.Redis.from_url(self.url, socket_timeout=START_TIMEOUT, socket_connect_timeout=START_TIMEOUT)
            try:
                self.pauses.replace(pause.stored(client, self.keys, self.hostname, self.pool, self.secret))
            finally:
                client.close()
        except (redis.RedisError, OSError) as err:
            log.warning("redis %s unreachable at start (%s); tasks paused when this pool last heard: %s",
                        shown_url(self.url), err, ", ".join(sorted(self.pauses.paused())) or "none")
        return self.pauses.paused()

    # --- what the master calls ----------------------------------------

    def start(self, master: Master) -> None:
        """Start listening (again, after a stop: a failed upgrade)."""
        self.master = master
        self._guard = master.fork_lock
        if not self._book_loaded:  # now, not at construction: the state directory has passed its checks
            self.book.load()
            self._book_loaded = True
        self._stop = stop = threading.Event()  # each thread its own: one stopped stays stopped
        threading.Thread(target=self._run, args=(stop,), name="control", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.up = False
        client = self._client
        if client is not None and self.master is not None and self._outage_since is None:
            try:
                store.clear_heartbeat(client, self.keys, self.hostname, self.pool, self.master.pid)
            except (redis.RedisError, OSError, ValueError):
                pass  # the heartbeat expires by itself
        # No join: the thread is a daemon that holds nothing the master needs
        # at exit, and it may sit up to a second in its wait; the master must
        # not linger after its last child.

    def forget_in_child(self) -> None:
        """After fork: the thread does not exist here, and its Redis sockets
        are the master's, including one it was connecting at the moment of
        the fork that no object holds yet. Each is found by its peer and
        blanked in place (inherited.py): no QUIT, no shutdown(), which would
        end the master's connection too."""
        inherited.blank_sockets_to(self._redis_peers)
        self._client = self._pubsub = None

    # --- the thread -----------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        backoff = Backoff(0.1, MAX_RETRY_DELAY)
        while not stop.is_set():
            try:
                self._session(stop)
                backoff.reset()
            except (redis.RedisError, OSError) as err:
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    with self._guard:
                            log.warning("redis %s unreachable (%s); fleet control waits until it is back; "
                                    "jobs are not affected", shown_url(self.url), err)
                stop.wait(backoff.next())
            except Exception:
                with self._guard:
                    log.exception("control listener failed; restarting it")
                stop.wait(1.0)

    def _session(self, stop: threading.Event) -> None:
        peers = redis_peers(self.url)  # again each time: the name may point elsewhere now
        with self._guard:
            self._redis_peers |= peers
        client = self._client = connect(self.url)
        pubsub = self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)  # subscribe first: nothing falls between it and the catch-up
            pubsub.connection.register_connect_callback(self._on_reconnect)
            with self._guard:
                if self._outage_since is not None:
                    log.info("redis reachable again after %.1f s", time.monotonic() - self._outage_since)
                    self._outage_since = None
                self._catch_up(client)
            self.up = True
            next_beat = 0.0
            while not stop.is_set():
                with self._guard:
                    if self._resync.is_set():  # redis-py reconnected the subscription by itself
                        self._resync.clear()
                        self._catch_up(client)
                    if time.monotonic() >= next_beat:
                        self._beat(client)
                        next_beat = time.monotonic() + HEARTBEAT_INTERVAL
                message = pubsub.get_message(timeout=1.0)  # the only wait, outside the guard
                if message is not None and message.get("type") == "message" and not stop.is_set():
                    with self._guard:
                        self._on_message(client, message["data"])
        finally:
            self.up = False
            pubsub.close()
            client.close()

    def _on_reconnect(self, connection: object) -> None:
        self._resync.set()

    def _catch_up(self, client: redis.Redis) -> None:
        """Apply what happened while we were not listening."""
        assert self.master is not None
        exit.catch_up(self, client, self.keys, self.hostname, self.pool, self.secret, self.master.control_since)
        self._reload_data(client)
        self._reload_pauses(client)

    # --- what the commands act on (command.Pool) --------------------------

    def submit(self, command: MasterCommand) -> None:
        assert self.master is not None
        self.master.submit(command)

    def reload_data(self) -> None:
        assert self._client is not None  # commands are applied within a session
        self._reload_data(self._client)

    def autoscales(self) -> bool:
        assert self.master is not None
        return self.master.autoscales()

    def reload_pauses(self) -> frozenset[str]:
        assert self._client is not None  # commands are applied within a session
        return self._reload_pauses(self._client)

    def _reload_pauses(self, client: redis.Redis) -> frozenset[str]:
        assert self.master is not None
        self.pauses.replace(pause.stored(client, self.keys, self.hostname, self.pool, self.secret))
        paused = self.pauses.paused()
        self.master.submit(PauseTasks(paused))
        return paused

    def serves(self, task: str) -> bool:
        assert self.master is not None
        return self.master.serves(task)

    def running_job(self, handle: str | None, unique: bytes | None) -> RunningJob | None:
        assert self.master is not None
        return self.master.running_job(handle, unique)

    def cancel_queued(self, handle: str) -> list[str]:
        assert self.master is not None
        dropped = []
        for server in self.master.gearmands():
            try:
                if cancel_job(server.host, server.port, handle, CANCEL_TIMEOUT):
                    dropped.append(str(server))
            except OSError as err:
                log.warning("cannot ask gearmand %s to drop job %s: %s", server, handle, err)
        return dropped

    def job_store(self) -> JobStore:
        assert self._client is not None  # commands are applied within a session
        return JobStore(self._client, JobKeys(self.keys.prefix))

    def _reload_data(self, client: redis.Redis) -> None:
        """Read the stored data; what is newer than what we hold goes to the children."""
        assert self.master is not None
        changed = False
        for scope, message, raw in stored(client, self.keys, self.hostname, self.pool, self.secret):
            changed = self.book.offer(scope, message, raw) or changed
        if changed:
            self.book.save()
        self.master.submit(PublishData(self.book.values(self.hostname, self.pool)))

    # --- messages -----------------------------------------------------------

    def _beat(self, client: redis.Redis) -> None:
        assert self.master is not None
        info: dict[str, Any] = self.master.summary()
        # Not at the first beat: what is there may be a dead master's last one.
        other = store.other_writer(client, self.keys, self.hostname, self.pool, self.master.pid,
                                   self._last_beat) if self._last_beat else None
        if other is not None:
            info["duplicate_of"] = other
            if time.monotonic() >= self._next_duplicate_warning:
                self._next_duplicate_warning = time.monotonic() + DUPLICATE_WARNING_INTERVAL
                log.error("another live master (pid %d) publishes as %s/%s too: two hosts share a name, or a pool "
                          "name is used twice; gm-ctl shows either and --host reaches both. Set [pool] hostname "
                          "or name apart", other, self.hostname, self.pool)
        self._last_beat = info["reported"]
        store.write_heartbeat(client, self.keys, self.hostname, self.pool, info, HEARTBEAT_TTL)

    def _on_message(self, client: redis.Redis, data: bytes) -> None:
        """Check, apply if aimed here, and answer (acks.py) what was aimed here."""
        message = None
        try:
            message = registry.decode(data, self.secret)
            if self.secret is not None:
                self.verifier.check(message, remember=lambda nonce: self._remember(client, nonce))
            self._check_is_new(message)
            if not message.targets(self.hostname, self.pool):
                return
            command = registry.COMMANDS[message.cmd]
            log.info("control command: %s (pid %d)", command.describe(message), os.getpid())
            detail = command.apply(self, message)
        except BadMessage as err:
            log.warning("rejected control message on %s: %s", self.channel, err)
            self.outcomes[acks.REFUSED, err.reason] += 1
            self._answer(client, message or _peek(data), acks.Ack(acks.REFUSED, err.reason, str(err)))
            return
        self.outcomes[acks.APPLIED, message.cmd] += 1
        self._answer(client, message, acks.Ack(acks.APPLIED, message.cmd, detail or ""))

    def _answer(self, client: redis.Redis, message: Message | None, ack: acks.Ack) -> None:
        """Answer MESSAGE if it names this pool and carries a nonce. Refusals
        are answered at most MAX_REFUSALS_ANSWERED a second: whoever can
        publish junk must not make every pool write keys without end."""
        if message is None or message.nonce is None or not NONCE_RE.fullmatch(message.nonce) \
                or not message.targets(self.hostname, self.pool):
            return
        if not ack.applied:
            second, count = self._refusal_window
            now = int(time.monotonic())
            self._refusal_window = (now, count + 1 if now == second else 1)
            if self._refusal_window[1] > MAX_REFUSALS_ANSWERED:
                return
        acks.answer(client, self.keys, self.hostname, self.pool, message.nonce, ack)

    def _remember(self, client: redis.Redis, nonce: str) -> bool:
        """True the first time this pool sees NONCE (kept in Redis, so a
        restart does not forget it)."""
        return store.remember_nonce(client, self.keys, self.hostname, self.pool, nonce,
                                    math.ceil(self.verifier.lifetime))

    def _check_is_new(self, message: Message) -> None:
        """A command stamped before this pool started was meant for the pools
        then running (a replayed scale would resize a fresh pool); what
        such a set or del stored, the catch-up has read already."""
        assert self.master is not None
        if message.ts is not None and message.ts < self.master.control_since:
            raise BadMessage(f"{message.cmd} sent before this pool started", "before-start")


def _peek(data: bytes) -> Message | None:
    """A refused message's targets and nonce, read without its signature:
    enough to answer it, never to act on it."""
    try:
        return parse(data, None)
    except BadMessage:
        return None
