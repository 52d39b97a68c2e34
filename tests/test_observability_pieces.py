"""Observability's pieces with fakes: job counts, the collector, the
watchdog cadence, the status table. No server."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from gearman_workers.control import tables
from gearman_workers.jobstats import DONE, FAILED, MAX_TASKS, POISON, TIMEOUT, JobStats
from gearman_workers.metrics import Snapshot, registry_for
from gearman_workers.notify import Notifier
from helpers import load_script


def test_job_counts_survive_their_child_and_never_count_twice() -> None:
    stats = JobStats(3)
    stats.add_tasks(["echo", "boom"])
    first, second = stats.counter(0), stats.counter(1)
    first.count(b"echo", DONE, 0.002)
    first.count(b"boom", TIMEOUT, 0.7)
    second.count(b"echo", DONE, 0.0004)
    second.count(b"boom", POISON, 123.0)  # not run: no duration
    stats.retire(0)  # the child in slot 0 died
    stats.counter(0).count(b"echo", FAILED, 0.03)  # its successor
    echo, boom = stats.totals(3)
    assert (echo.task, echo.outcomes) == ("echo", {"done": 2, "failed": 1, "timeout": 0, "poison": 0,
                                                        "cancelled": 0})
    assert sum(echo.buckets) == 3 and echo.buckets[0] == 1 and echo.buckets[1] == 1  # <= 1 ms, <= 5 ms
    assert boom.outcomes == {"done": 0, "failed": 0, "timeout": 1, "poison": 1, "cancelled": 0}
    assert sum(boom.buckets) == 1 and boom.seconds == pytest.approx(0.7)


def test_a_reload_keeps_old_rows_and_overflow_shares_the_last() -> None:
    stats = JobStats(1)
    stats.add_tasks([f"t{i}" for i in range(MAX_TASKS + 5)])
    counter = stats.counter(0)
    counter.count(b"t0", DONE, 0.1)
    counter.count(f"t{MAX_TASKS + 4}".encode(), DONE, 0.1)
    counter.count(f"t{MAX_TASKS - 1}".encode(), DONE, 0.1)
    totals = stats.totals(1)
    assert len(totals) == MAX_TASKS and totals[0].outcomes["done"] == 1
    assert totals[-1].task == "(other tasks)" and totals[-1].outcomes["done"] == 2


class FakeSource:
    def metrics_snapshot(self) -> Snapshot:
        stats = JobStats(1)
        stats.add_tasks(["echo"])
        stats.counter(0).count(b"echo", DONE, 0.02)
        return Snapshot(desired=3, children={"idle": 2, "busy": 1}, exits={"crash": 4},
                        registered={"10.0.0.1:4730": 3, "10.0.0.2:4730": 0}, control_up=False,
                        jobs=stats.totals(1), resident={"master": 30_000_000, "children": 90_000_000})


def test_the_collector_labels_every_series_with_pool_and_host() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry_for(FakeSource(), "batch", "web1")).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("gearman_workers_")}
    assert all(("host", "web1") in labels and ("pool", "batch") in labels for _, labels in samples)

    def get(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted({"pool": "batch", "host": "web1", **labels}.items()))]

    assert get("gearman_workers_jobs_total", task="echo", outcome="done") == 1
    assert get("gearman_workers_job_duration_seconds_bucket", task="echo", le="0.01") == 0
    assert get("gearman_workers_job_duration_seconds_bucket", task="echo", le="0.025") == 1
    assert get("gearman_workers_children", state="starting") == 0
    assert get("gearman_workers_children", state="busy") == 1
    assert get("gearman_workers_child_exits_total", reason="crash") == 4
    assert get("gearman_workers_child_exits_total", reason="hung") == 0
    assert get("gearman_workers_gearmand_up", server="10.0.0.1:4730") == 1
    assert get("gearman_workers_gearmand_up", server="10.0.0.2:4730") == 0
    assert get("gearman_workers_control_up") == 0
    assert get("gearman_workers_resident_bytes", role="children") == 90_000_000


def test_watchdog_kicks_are_due_four_times_per_period(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / "notify"))
    sink.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert "WATCHDOG_USEC" not in os.environ  # our children must not think it is theirs
    assert notifier.environment() == {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"}
    notifier.kick_watchdog()
    notifier.kick_watchdog()  # not due yet
    assert sink.recv(100) == b"WATCHDOG=1"
    with pytest.raises(BlockingIOError):
        sink.recv(100)
    due = notifier.watchdog_due()
    assert due is not None and 0.9 < due - time.monotonic() <= 1.0
    notifier.muted = True  # a successor before it is in charge
    assert notifier.watchdog_due() is None


def test_status_table_drops_the_job_column_before_it_wraps(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    child = {"slot": 0, "pid": 4242, "state": "busy", "dedicated_to": None, "task": "resize_images",
             "job": "H:worker-host-17:90210", "busy_for": 75.2, "jobs_done": 12345, "jobs_failed": 3,
             "rss": 52_000_000, "age": 7300.0}
    pools = [{"host": "worker-host-17", "name": "images", "pid": 4000, "desired": 1, "children": [child]}]
    document = tables.status_document(pools)
    assert document["children"][0] == {"host": "worker-host-17", "pool": "images", "master": 4000,
                                       "reported": None, **child}
    for columns, job_shown in ((200, True), (80, False)):
        monkeypatch.setenv("COLUMNS", str(columns))
        tables.print_status(document["children"])
        out = capsys.readouterr().out
        assert ("H:worker-host-17:90210" in out) == job_shown
        assert all(len(line) <= columns for line in out.splitlines())
        assert " 75s " in out and "2h01m" in out and "50M" in out


def test_the_metrics_reference_is_what_the_collector_exports() -> None:
    module = load_script("scripts/render_reference.py")
    assert (module.ROOT / "docs/reference/metrics.md").read_text() == module.metrics(), \
        "docs/reference/metrics.md is stale: run scripts/render_reference.py"
    assert "`gearman_workers_jobs_total`" in module.metrics()
