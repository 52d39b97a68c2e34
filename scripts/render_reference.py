#!/usr/bin/env python3
"""Write the reference pages from the code that defines what they list:
docs/reference/configuration.md from the option table in
lib/gearman_workers/config.py (OPTIONS), docs/reference/metrics.md from
the collector in lib/gearman_workers/metrics.py (rendered from a sample
snapshot that has every optional part). Tests fail when a page is stale
(tests/test_config.py, tests/test_observability_pieces.py).

    .venv/bin/python scripts/render_reference.py
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from gearman_workers import config  # noqa: E402
from gearman_workers.jobstats import BUCKETS, OUTCOMES, TaskTotals  # noqa: E402
from gearman_workers.metrics import PoolCollector, Snapshot  # noqa: E402
from gearman_workers.periodic.firing import Scheduler  # noqa: E402
from gearman_workers.periodic.spec import SCHEDULE_KEYS, parse  # noqa: E402

CONFIG_INTRO = """# Configuration reference

Generated from the option table in `lib/gearman_workers/config.py` by
`scripts/render_reference.py`; do not edit by hand.

A pool reads one TOML file (`--config FILE`); every key also has a flag,
and a flag wins over the file. Unknown sections and keys are refused. A bad
value, or a start-up problem, gives one line that names the key, and exit
status 2: nothing is started or created. `--check-config` validates the
file, loads the tasks and exits.
"""
TASKS = """## [tasks]

One entry per Gearman function the pool serves: `NAME = "module:callable"`,
or a table:

| key | meaning |
|---|---|
{task_keys}

`--task NAME=module:callable` adds or replaces one (repeatable). What
`retries` and `keep_results` do is in docs/jobs.md.
"""
SCHEDULES = """## [schedules]

Periodic jobs, fired once per slot by the fleet's jobs leader (needs
`[control] redis_url`; how: docs/schedules.md). One entry per schedule,
`NAME = {{ task = "...", cron = "0 3 * * *" }}` or `every = SECONDS`; a
NAME is 1 to 40 letters, digits, `.`, `_` or `-`. In the file only.

| key | meaning |
|---|---|
{schedule_keys}
"""


def configuration() -> str:
    """docs/reference/configuration.md: every key, its flag, its default, what it does."""
    parts = [CONFIG_INTRO]
    sections: dict[str, list[config.Option]] = {}
    for option in config.OPTIONS:
        if option.dest not in config.NAMED_TABLES:
            sections.setdefault(option.section, []).append(option)
    for section, options in sections.items():
        parts.append(f"## [{section}]\n\n| key | flag | default | meaning |\n|---|---|---|---|")
        for option in options:
            flag = "--task" if option.dest == "tasks" else option.flag
            parts.append(f"| `{option.key}` | `{flag}` | `{config.default_text(option)}` | {option.help} |")
        parts.append("")
    parts.append(TASKS.format(task_keys="\n".join(f"| `{key}` | {meaning} |" for key, meaning in config.TASK_KEYS)))
    parts.append(SCHEDULES.format(schedule_keys="\n".join(f"| `{key}` | {meaning} |"
                                                            for key, meaning in SCHEDULE_KEYS)))
    return "\n".join(parts).rstrip() + "\n"


METRICS_INTRO = """# Metrics reference

Generated from the collector in `lib/gearman_workers/metrics.py` by
`scripts/render_reference.py`; do not edit by hand.

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
            "gearman_workers_control_messages": "Only with a control channel.",
            "gearman_workers_autoscale_decisions": "Only when autoscaling.",
            "gearman_workers_queue_waiting": "Only when autoscaling.",
            "gearman_workers_children_min": "Only when autoscaling.",
            "gearman_workers_children_max": "Only when autoscaling.",
            "gearman_workers_dead_jobs": "Only in a pool with a task that has retries or keep_results.",
            "gearman_workers_task_paused": "Only with a control channel.",
            "gearman_workers_task_withheld_children": "Only with a control channel."}


class Sample:
    """A master with every optional part: a control channel, autoscaling, a job keeper."""

    def metrics_snapshot(self) -> Snapshot:
        task = TaskTotals("echo", dict.fromkeys(OUTCOMES, 0), [0] * (len(BUCKETS) + 1), 0.0)
        autoscale = {"min": 1, "max": 4, "waiting": 0, "up": 0, "down": 0, "last": None}
        return Snapshot(1, {}, {}, {"127.0.0.1:4730": 1}, True, [task], {"master": 0, "children": 0}, autoscale,
                        {("applied", "exit"): 0}, {"echo": 0}, {"echo": (False, 0)}, leader=True,
                        schedules=Scheduler(parse({"nightly": {"task": "echo", "every": 60}}), "host/pool",
                                            threading.Lock()),
                        queues={"127.0.0.1:4730": {"echo": (0, 0, 1)}})


def _series(name: str, kind: str) -> str:
    if kind == "counter":
        return f"`{name}_total`"
    if kind == "histogram":
        return f"`{name}_bucket`, `_sum`, `_count`"
    return f"`{name}`"


def metrics() -> str:
    """docs/reference/metrics.md: every series, its type, labels and help."""
    rows = []
    for family in PoolCollector(Sample(), "POOL", "HOST").collect():
        labels = sorted({label for sample in family.samples for label in sample.labels} - {"pool", "host", "le"})
        where = f" {OPTIONAL[family.name]}" if family.name in OPTIONAL else ""
        rows.append(f"| {_series(family.name, family.type)} | {family.type} | {', '.join(labels) or '-'} | "
                    f"{family.documentation}{where} |")
    return METRICS_INTRO + "\n".join(rows) + "\n"


PAGES: dict[Path, Callable[[], str]] = {ROOT / "docs/reference/configuration.md": configuration,
                                        ROOT / "docs/reference/metrics.md": metrics}


def main() -> int:
    for page, render in PAGES.items():
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(render())
        print(f"wrote {page.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
