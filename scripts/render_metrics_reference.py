#!/usr/bin/env python3
"""Write docs/reference/metrics.md from the collector in
lib/gearman_workers/metrics.py: every series a pool exports, its type, its
labels and its help text, as the code makes them (rendered from a sample
snapshot that has every optional part). tests/test_observability_pieces.py
fails when the page is stale.

    .venv/bin/python scripts/render_metrics_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from gearman_workers.jobstats import BUCKETS, OUTCOMES, TaskTotals  # noqa: E402
from gearman_workers.metrics import PoolCollector, Snapshot  # noqa: E402

PAGE = ROOT / "docs/reference/metrics.md"
INTRO = """# Metrics reference

Generated from the collector in `lib/gearman_workers/metrics.py` by
`scripts/render_metrics_reference.py`; do not edit by hand.

With `metrics_listen` set (`--metrics-listen 127.0.0.1:9810`), the master
serves these on `/metrics`, in Prometheus's text format or OpenMetrics
(chosen by the scraper's `Accept` header). Every series carries `pool`
and `host`, so that a fleet adds up by them. The children never serve
anything: they count into shared memory and the master reads it when
scraped. Besides these, the master's own `process_*` series
(prometheus-client's process collector: CPU seconds, resident memory, open
files, start time). How to read them, the example alerts and the
dashboard: [../observability.md](../observability.md).

| series | type | labels besides pool, host | meaning |
|---|---|---|---|
"""
OPTIONAL = {"gearman_workers_control_up": "Only with a control channel.",
            "gearman_workers_autoscale_decisions": "Only when autoscaling.",
            "gearman_workers_queue_waiting": "Only when autoscaling.",
            "gearman_workers_children_min": "Only when autoscaling.",
            "gearman_workers_children_max": "Only when autoscaling."}


class Sample:
    """A master with every optional part: a control channel, autoscaling."""

    def metrics_snapshot(self) -> Snapshot:
        task = TaskTotals("echo", dict.fromkeys(OUTCOMES, 0), [0] * (len(BUCKETS) + 1), 0.0)
        autoscale = {"min": 1, "max": 4, "waiting": 0, "up": 0, "down": 0, "last": None}
        return Snapshot(1, {}, {}, {"127.0.0.1:4730": 1}, True, [task], {"master": 0, "children": 0}, autoscale)


def _series(name: str, kind: str) -> str:
    if kind == "counter":
        return f"`{name}_total`"
    if kind == "histogram":
        return f"`{name}_bucket`, `_sum`, `_count`"
    return f"`{name}`"


def render() -> str:
    rows = []
    for family in PoolCollector(Sample(), "POOL", "HOST").collect():
        labels = sorted({label for sample in family.samples for label in sample.labels} - {"pool", "host", "le"})
        where = f" ({OPTIONAL[family.name]})" if family.name in OPTIONAL else ""
        rows.append(f"| {_series(family.name, family.type)} | {family.type} | {', '.join(labels) or '-'} | "
                    f"{family.documentation}{where} |")
    return INTRO + "\n".join(rows) + "\n"


def main() -> int:
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
