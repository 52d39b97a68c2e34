"""Prometheus metrics, served by the master from what its children counted.

The children never see this module: they count into shared memory
(jobstats.py, scoreboard.py) and the master reads it when scraped. One
thread serves HTTP; it takes the master's fork lock while it reads and
renders, so that a child is never forked while this thread holds a lock.

Every series carries `pool` and `host`, so that a fleet adds up by them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from . import __version__
from .children import EXIT_REASONS
from .config import Server
from .jobstats import BUCKETS, OUTCOMES, TaskTotals

CHILD_STATES = ("starting", "idle", "busy", "stopping")
log = logging.getLogger("gearman_workers.metrics")
# The families this collector makes; each has add_metric (Metric itself has not).
Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
Countable = TypeVar("Countable", CounterMetricFamily, GaugeMetricFamily)
SCRAPE_TIMEOUT = 10.0  # seconds a client may take over its whole request
MAX_CONNECTIONS = 16  # served at once; past that a connection is closed unanswered


@dataclasses.dataclass
class Snapshot:
    """The master's state, read at one moment."""

    desired: int
    children: dict[str, int]    # state -> children in it
    exits: dict[str, int]       # reason -> children that left for it
    registered: dict[str, int]  # gearmand host:port -> children registered with it
    control_up: bool | None     # None: no control channel configured
    jobs: list[TaskTotals]
    resident: dict[str, int] = dataclasses.field(default_factory=dict)  # "master"/"children" -> bytes
    autoscale: dict[str, Any] | None = None  # min, max, waiting, up, down (None: a fixed pool)
    control_messages: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (outcome, reason)
    dead_jobs: dict[str, int] | None = None  # task -> dead letters in the fleet (None: this pool keeps no jobs)
    tasks: dict[str, tuple[bool, int]] | None = None  # task -> (paused, children withholding it); None: no control
    leader: bool | None = None  # holds the fleet's jobs lease (None: no fleet control)
    # gearmand host:port -> task -> (queued, running, workers) as last polled (None: no queue watcher)
    queues: dict[str, dict[str, tuple[int, int, int]]] | None = None
    schedules: Firing | None = None  # the slots this pool fired, and how late (None: no fleet control)


class Firing(Protocol):
    """What the schedules' metrics read (periodic/firing.py's Scheduler)."""

    @property
    def fired(self) -> dict[str, int]: ...  # schedule -> slots this pool fired
    @property
    def lag(self) -> Lag: ...


class Lag(Protocol):
    @property
    def bounds(self) -> tuple[float, ...]: ...  # the histogram's buckets (upper bounds, seconds)
    @property
    def counts(self) -> list[int]: ...  # cumulative, one per bound
    @property
    def total(self) -> float: ...
    @property
    def observed(self) -> int: ...


class Source(Protocol):
    """What the exporter reads of the master (master.py)."""

    def metrics_snapshot(self) -> Snapshot: ...


class PoolCollector(Collector):
    """Turns a Snapshot into metric families (prometheus-client's Collector)."""

    def __init__(self, source: Source, pool: str, host: str) -> None:
        self.source = source
        self.labels = {"pool": pool, "host": host}

    def _family(self, kind: type[Family], name: str, documentation: str, *labels: str) -> Family:
        return kind(name, documentation, labels=[*self.labels, *labels])

    def _by_label(self, kind: type[Countable], name: str, documentation: str, label: str,
                  counts: dict[str, int]) -> Countable:
        """One series per key of COUNTS, labelled LABEL."""
        family = self._family(kind, name, documentation, label)
        for key, count in sorted(counts.items()):
            family.add_metric(self._values(key), count)
        return family

    def _values(self, *extra: str) -> list[str]:
        return [*self.labels.values(), *extra]

    def collect(self) -> Iterator[Metric]:
        snap = self.source.metrics_snapshot()
        yield from self._jobs(snap.jobs)
        yield from self._children(snap)
        yield from self._links(snap)
        if snap.autoscale is not None:
            yield from self._autoscale(snap.autoscale)
        info = self._family(GaugeMetricFamily, "gearman_workers_build_info", "The running version.", "version")
        info.add_metric(self._values(__version__), 1)
        yield info

    def _jobs(self, jobs: list[TaskTotals]) -> Iterator[Metric]:
        counts = self._family(CounterMetricFamily, "gearman_workers_jobs",
                              "Jobs ended, by task and outcome (done, failed, timeout: hit its time limit, "
                              "poison: not run, its runs had killed poison_kills children).", "task", "outcome")
        durations = self._family(HistogramMetricFamily, "gearman_workers_job_duration_seconds",
                                 "Time the task ran, per job (poison jobs are not run).", "task")
        for task in jobs:
            for outcome in OUTCOMES:
                counts.add_metric(self._values(task.task, outcome), task.outcomes[outcome])
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], task.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric(self._values(task.task), buckets, task.seconds)
        yield counts
        yield durations

    def _children(self, snap: Snapshot) -> Iterator[Metric]:
        children = self._family(GaugeMetricFamily, "gearman_workers_children", "Children, by state.", "state")
        for state in CHILD_STATES:
            children.add_metric(self._values(state), snap.children.get(state, 0))
        yield children
        desired = self._family(GaugeMetricFamily, "gearman_workers_children_desired",
                               "Children the master keeps alive.")
        desired.add_metric(self._values(), snap.desired)
        yield desired
        exits = self._family(CounterMetricFamily, "gearman_workers_child_exits",
                             "Children that left, by reason (crash, killed: by a signal nobody in the pool "
                             "sent, recycled, timeout, hung, stopped).", "reason")
        for reason in EXIT_REASONS:
            exits.add_metric(self._values(reason), snap.exits.get(reason, 0))
        yield exits
        memory = self._family(GaugeMetricFamily, "gearman_workers_resident_bytes",
                              "Resident memory of the master, and of all its children together.", "role")
        for role, size in snap.resident.items():
            memory.add_metric(self._values(role), size)
        yield memory

    def _links(self, snap: Snapshot) -> Iterator[Metric]:
        up = self._family(GaugeMetricFamily, "gearman_workers_gearmand_up",
                          "1 while at least one child is registered with this gearmand.", "server")
        registered = self._family(GaugeMetricFamily, "gearman_workers_children_registered",
                                  "Children registered with this gearmand.", "server")
        for server, count in snap.registered.items():
            up.add_metric(self._values(server), 1 if count else 0)
            registered.add_metric(self._values(server), count)
        yield up
        yield registered
        if snap.control_up is not None:
            control = self._family(GaugeMetricFamily, "gearman_workers_control_up",
                                   "1 while the master is subscribed to the Redis control channel.")
            control.add_metric(self._values(), 1 if snap.control_up else 0)
            yield control
            messages = self._family(CounterMetricFamily, "gearman_workers_control_messages",
                                    "Control messages aimed at this pool (or unreadable), by outcome (applied, "
                                    "refused) and reason (the command applied, or why it was refused: "
                                    "bad-signature, unsigned, stale, replayed, malformed, autoscaling...).",
                                    "outcome", "reason")
            for (outcome, reason), count in sorted(snap.control_messages.items()):
                messages.add_metric(self._values(outcome, reason), count)
            yield messages
        if snap.dead_jobs is not None:
            yield self._by_label(GaugeMetricFamily, "gearman_workers_dead_jobs",
                                 "Dead letters in the whole fleet, by task (every pool with retries reports the "
                                 "same count: aggregate with max, not sum).", "task", snap.dead_jobs)
        if snap.tasks is not None:
            yield from self._task_control(snap.tasks)
        if snap.leader is not None:
            leader = self._family(GaugeMetricFamily, "gearman_workers_leader",
                                  "1 while this pool is the fleet's jobs leader (it submits due jobs and fires the "
                                  "schedules), else 0.")
            leader.add_metric(self._values(), 1 if snap.leader else 0)
            yield leader
        if snap.schedules is not None:
            yield from self._schedules(snap.schedules)
        if snap.queues is not None:
            yield from self._queues(snap.queues)

    def _queues(self, queues: dict[str, dict[str, tuple[int, int, int]]]) -> Iterator[Metric]:
        said = ("Jobs of the task waiting in this gearmand's queue (not running), as its admin status said at "
                "the last poll (once a second); every pool serving the task says the same: aggregate with max.",
                "Jobs of the task this gearmand has handed to a worker and not seen end.",
                "Workers registered with this gearmand for the task (of every pool and client library).")
        families = [self._family(GaugeMetricFamily, f"gearman_workers_gearmand_{name}", text, "server", "task")
                    for name, text in zip(("queued", "running", "workers"), said, strict=True)]
        for server, table in sorted(queues.items()):
            for task, row in sorted(table.items()):
                for family, value in zip(families, row, strict=True):
                    family.add_metric(self._values(server, task), value)
        yield from families

    def _schedules(self, firing: Firing) -> Iterator[Metric]:
        yield self._by_label(CounterMetricFamily, "gearman_workers_schedule_fired",
                             "Slots of the schedule this pool fired as the leader (sum over pools: each slot is "
                             "fired by one).", "schedule", firing.fired)
        lag = self._family(HistogramMetricFamily, "gearman_workers_schedule_lag_seconds",
                           "Fire time minus slot time of the slots this pool fired.")
        buckets = [(str(bound), count) for bound, count in zip(firing.lag.bounds, firing.lag.counts, strict=True)]
        lag.add_metric(self._values(), [*buckets, ("+Inf", firing.lag.observed)], firing.lag.total)
        yield lag

    def _task_control(self, tasks: dict[str, tuple[bool, int]]) -> Iterator[Metric]:
        paused = self._family(GaugeMetricFamily, "gearman_workers_task_paused",
                              "1 while the task is paused for this pool (gm-ctl pause), else 0.", "task")
        withheld = self._family(GaugeMetricFamily, "gearman_workers_task_withheld_children",
                                "Children that do not offer the task to gearmand now: it is paused, or they wait "
                                "for a concurrency token.", "task")
        for task, (is_paused, children) in sorted(tasks.items()):
            paused.add_metric(self._values(task), 1 if is_paused else 0)
            withheld.add_metric(self._values(task), children)
        yield paused
        yield withheld


    def _autoscale(self, scaling: dict[str, Any]) -> Iterator[Metric]:
        decisions = self._family(CounterMetricFamily, "gearman_workers_autoscale_decisions",
                                 "Autoscaling decisions, up or down.", "direction")
        for direction in ("up", "down"):
            decisions.add_metric(self._values(direction), scaling[direction])
        yield decisions
        for name, key, text in (("gearman_workers_queue_waiting", "waiting",
                                 "Jobs of the shared tasks waiting in gearmand, as last polled."),
                                ("gearman_workers_children_min", "min", "min_processes: fewest shared children."),
                                ("gearman_workers_children_max", "max", "max_processes: most shared children.")):
            gauge = self._family(GaugeMetricFamily, name, text)
            gauge.add_metric(self._values(), scaling[key])
            yield gauge


def registry_for(source: Source, pool: str, host: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PoolCollector(source, pool, host))
    ProcessCollector(registry=registry)  # the master's own CPU, memory, open files
    return registry


class _Handler(BaseHTTPRequestHandler):
    """One connection, in a thread of its own (see _Server). A client that
    trickles its request byte by byte is cut off at SCRAPE_TIMEOUT: the
    socket timeout alone bounds each read, not the request."""

    server: _Server
    timeout = SCRAPE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(SCRAPE_TIMEOUT, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut_off(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)  # the pending read ends; the thread finishes

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def do_GET(self) -> None:
        if urlsplit(self.path).path not in ("/", "/metrics"):
            self.send_error(404, "only /metrics here")
            return
        encode, content_type = choose_encoder(self.headers.get("Accept", ""))
        with self.server.lock:
            body = encode(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news


class _Server(ThreadingMixIn, HTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: a slow or
    idle client holds one thread, never the scrapes of others."""

    lock: threading.Lock
    registry: CollectorRegistry
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics: %d connections open already; closing one from %s", MAX_CONNECTIONS, client_address)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or times out is its own business: one debug line."""
        log.debug("metrics request from %s ended early: %s", client_address, sys.exc_info()[1])

    def server_bind(self) -> None:
        # Not HTTPServer's: it asks DNS for our name (getfqdn), which may hang.
        super(HTTPServer, self).server_bind()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Listens on ADDRESS (or on an inherited socket listening there)."""

    def __init__(self, address: Server, inherited_fd: int = -1) -> None:
        self.address = address
        server_class = _Server6 if ":" in address.host else _Server
        family = server_class.address_family
        self._http = server_class((address.host, address.port), _Handler, bind_and_activate=False)
        inherited = _adopt(inherited_fd, family, address)
        if inherited is not None:
            self._http.socket.close()
            self._http.socket = inherited
        else:
            try:
                self._http.server_bind()
                self._http.server_activate()
            except OSError:
                self._http.server_close()
                raise
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        return self._http.socket.fileno()

    def start(self, source: Source, pool: str, host: str, lock: threading.Lock) -> None:
        registry = registry_for(source, pool, host)
        choose_encoder("")[0](registry)  # render once here: its imports happen before the thread exists
        self._http.registry, self._http.lock = registry, lock
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, without waiting for the thread to notice (it does
        within its poll interval, then closes the socket)."""
        if self._thread is None:
            self._http.server_close()
            return
        self._thread = None

        def stop() -> None:
            self._http.shutdown()
            self._http.server_close()

        threading.Thread(target=stop, name="metrics-stop", daemon=True).start()

    def forget_in_child(self) -> None:
        """After fork: the thread does not exist here; only the socket does."""
        self._http.socket.close()


def _adopt(fd: int, family: int, address: Server) -> socket.socket | None:
    """The predecessor's listening socket, if it listens where we are told to."""
    if fd < 0:
        return None
    sock = socket.socket(fileno=fd)
    try:
        host, port = sock.getsockname()[:2]
        if sock.family == family and port == address.port and host == socket.getaddrinfo(
                address.host, None, family)[0][4][0]:
            return sock
    except OSError:
        pass
    sock.close()
    return None
