"""examples/hooks against a real gearmand and the real OpenTelemetry SDK:
one span per job even when every child is recycled after one job, an
error span for a job past its time limit, spans flushed when the pool is
stopped, a trace continued from the client, and each failure reported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from helpers import EXAMPLES, Gearmand, Pool, submit, wait_for

pytest.importorskip("opentelemetry.sdk", reason="requirements-dev.txt installs the OpenTelemetry SDK")
HOOKS = EXAMPLES / "hooks"


def traced_pool(gearmand: Gearmand, tmp_path: Path, *extra: str, processes: int = 2) -> Pool:
    env = {**os.environ, "GW_TRACE_FILE": str(tmp_path / "spans.jsonl"), "GW_ERROR_FILE": str(tmp_path / "errors"),
           "OTEL_BSP_SCHEDULE_DELAY": "600000"}  # nothing leaves on the processor's schedule: only by a flush
    return Pool(gearmand, tmp_path, "--python-path", str(HOOKS), "--python-path", str(EXAMPLES), *extra,
                name="traced", processes=processes, config=HOOKS / "pool.toml", env=env)


def spans(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_thousand_jobs_with_a_child_each_give_a_thousand_spans(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = traced_pool(gearmand, tmp_path, "--max-jobs", "1")
    pool.start()
    try:
        requests = gearmand.client().submit_multiple_jobs(
            [{"task": "echo", "data": f"job {n}"} for n in range(1000)], poll_timeout=300)
        assert [r.result for r in requests] == [f"job {n}".encode() for n in range(1000)]
    finally:
        pool.stop()
    seen = spans(tmp_path)
    handles = {span["attributes"]["gearman.handle"] for span in seen}
    assert len(seen) == 1000 and handles == {r.job.handle.decode() for r in requests}
    assert {span["status"] for span in seen} == {"UNSET"} and {span["name"] for span in seen} == {"gearman echo"}
    assert len({span["pid"] for span in seen}) >= 999  # a child a job (max_jobs = 1; 10 % jitter may add one)


def test_a_timeout_is_an_error_span_and_spans_are_flushed_on_term(gearmand: Gearmand, tmp_path: Path) -> None:
    pool = traced_pool(gearmand, tmp_path, "--job-timeout", "0.5", "--max-jobs", "0")
    pool.start()
    try:
        assert submit(gearmand, "slow", "5").state == "FAILED"
        assert submit(gearmand, "fail", "on purpose").state == "FAILED"
        for n in range(10):
            submit(gearmand, "echo", f"job {n}")
        assert spans(tmp_path) == []  # all in the children's batch processors
    finally:
        pool.stop()  # TERM: each child's child_exit flushes
    by_task: dict[str, list[dict[str, Any]]] = {}
    for span in spans(tmp_path):
        by_task.setdefault(span["attributes"]["gearman.task"], []).append(span)
    (timed_out,) = by_task["slow"]
    assert timed_out["status"] == "ERROR" and timed_out["attributes"]["gearman.outcome"] == "timeout"
    assert timed_out["events"] == ["exception"]  # on_failure recorded the JobTimeout
    (failed,) = by_task["fail"]
    assert failed["status"] == "ERROR" and failed["attributes"]["gearman.outcome"] == "failed"
    assert len(by_task["echo"]) == 10
    reports = [json.loads(line) for line in (tmp_path / "errors").read_text().splitlines()]
    assert sorted(report["task"] for report in reports) == ["fail", "slow"]
    assert "RuntimeError: asked to fail" in next(r["error"] for r in reports if r["task"] == "fail")


def test_a_trace_started_by_the_client_goes_on_in_the_job(gearmand: Gearmand, tmp_path: Path) -> None:
    import sys

    from opentelemetry.sdk.trace import TracerProvider

    sys.path.insert(0, str(HOOKS))
    try:
        import tracing
    finally:
        sys.path.remove(str(HOOKS))
    pool = traced_pool(gearmand, tmp_path, processes=1)
    pool.start()
    try:
        with TracerProvider().get_tracer("client").start_as_current_span("client") as span:
            wrapped = tracing.wrap(b"payload")
        assert wrapped.startswith(b"GWTRACE 00-") and wrapped.endswith(b"\npayload")
        assert submit(gearmand, "echo", wrapped).result == b"payload"  # the task sees the payload alone
        assert submit(gearmand, "echo", b"plain").result == b"plain"  # the envelope is never required
    finally:
        pool.stop()
    wait_for(lambda: len(spans(tmp_path)) == 2, what="both spans")
    continued = [s for s in spans(tmp_path) if s["trace_id"] == f"{span.get_span_context().trace_id:032x}"]
    assert len(continued) == 1
