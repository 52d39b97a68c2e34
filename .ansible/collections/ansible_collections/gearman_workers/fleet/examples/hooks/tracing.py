"""OpenTelemetry tracing for a gearman-workers pool, wired through its hooks.

A pre-fork pool breaks the SDK's batch span processor if it is started
in the master: its export thread does not survive fork, and a child that
is recycled takes its unexported spans with it. So:

- post_fork starts a TracerProvider and its BatchSpanProcessor in each
  child, after the fork;
- before_job opens one span per job (task, handle, unique), continuing a
  trace the client started if the payload carries one (the envelope
  below); after_job ends it with the outcome, and marks every outcome but
  `done` as an error; on_failure records the exception on it;
- child_exit flushes what is left before the child leaves (recycled after
  max_jobs, or stopped), within the pool's exit_timeout.

The envelope (optional, never required): a payload that starts with the
line `GWTRACE <W3C traceparent>\\n` continues that trace; the line is cut
off before the task sees the payload. `wrap(payload)` in a client that
has a current span adds it.

Where spans go: to the JSON-lines file GW_TRACE_FILE if it is set (the
test uses it), else through OTLP over HTTP (pip install
opentelemetry-exporter-otlp-proto-http; OTEL_EXPORTER_OTLP_ENDPOINT).

    [hooks]
    post_fork = "tracing:post_fork"
    before_job = "tracing:before_job"
    after_job = "tracing:after_job"
    on_failure = "tracing:on_failure"
    child_exit = "tracing:child_exit"
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ENVELOPE = b"GWTRACE "
_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_spans: dict[str, Any] = {}  # job handle -> its open span


class JsonLinesExporter(SpanExporter):
    """One JSON object per span, appended whole (for tests and local runs)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps({
            "name": span.name, "trace_id": f"{span.context.trace_id:032x}", "pid": os.getpid(),
            "status": span.status.status_code.name, "attributes": dict(span.attributes or {}),
            "events": [event.name for event in span.events]}) + "\n" for span in spans)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


def _exporter() -> SpanExporter:
    if os.environ.get("GW_TRACE_FILE"):
        return JsonLinesExporter(os.environ["GW_TRACE_FILE"])
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def post_fork(worker: Any) -> None:
    global _provider
    resource = Resource.create({"service.name": f"gearman-workers/{worker.config.name}",
                                "host.name": worker.config.hostname, "process.pid": os.getpid()})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(_exporter()))


def before_job(worker: Any, job: Any) -> None:
    parent = None
    if job.data.startswith(ENVELOPE):
        line, _, job.data = job.data.partition(b"\n")
        parent = _propagator.extract({"traceparent": line[len(ENVELOPE):].decode("ascii", "replace")})
    tracer = _provider.get_tracer("gearman-workers") if _provider else trace.get_tracer("gearman-workers")
    _spans[job.handle] = tracer.start_span(f"gearman {job.task}", context=parent, kind=SpanKind.CONSUMER,
                                           attributes={"gearman.task": job.task, "gearman.handle": job.handle,
                                                       "gearman.unique": job.unique})


def on_failure(worker: Any, job: Any, exc: BaseException) -> None:
    span = _spans.get(job.handle)
    if span is not None:
        span.record_exception(exc)


def after_job(worker: Any, job: Any, outcome: str) -> None:
    span = _spans.pop(job.handle, None)
    if span is None:
        return
    span.set_attribute("gearman.outcome", outcome)
    if outcome != "done":
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


def child_exit(worker: Any, reason: str) -> None:
    if _provider is not None:
        _provider.shutdown()  # flushes the batch processor's queue, then stops its thread


def wrap(payload: bytes) -> bytes:
    """In a client, inside a span: PAYLOAD in the envelope that carries the trace to the job's span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return ENVELOPE + carrier["traceparent"].encode() + b"\n" + payload if "traceparent" in carrier else payload
