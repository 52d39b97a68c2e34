"""The `pool_list` filter: every pool the role deploys on a host, each with
every key. A pool names what differs; the rest comes from the single-pool
variables (gearman_workers_processes...), and each pool gets its own
metrics port, counting up from gearman_workers_metrics_port. The roles
call it as a filter; pytest calls it directly (tests/test_role_files.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def pool_list(pools: Iterable[Mapping[str, Any]] | None, defaults: Mapping[str, Any], name: str,
              metrics_port: int | str, examples: Mapping[str, str]) -> list[dict[str, Any]]:
    """POOLS (None or empty: one pool called NAME) completed from DEFAULTS.
    A pool without tasks gets the EXAMPLES, with their preload, if any
    (else it keeps none, and the role's preflight refuses it)."""
    completed = []
    for index, given in enumerate(list(pools or []) or [{"name": name}]):
        pool = {**defaults, "metrics_port": int(metrics_port) + index, **given}
        if not pool.get("tasks") and examples:
            pool |= {"tasks": dict(examples), "preload": pool.get("preload") or "tasks:preload"}
        completed.append(pool)
    return completed


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pool_list": pool_list}
