"""Runtime data that operators change live (``gm-ctl set``), read by task code.

    from gearman_workers import runtime
    limit = runtime.get("rate_limit", 100)

Values are JSON values. A child applies changes between jobs, never while a
task runs, so a task sees one consistent snapshot for the whole job.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_data: dict[str, Any] = {}


def get(key: str, default: Any = None) -> Any:
    """The current value of KEY, or DEFAULT when it is not set."""
    return _data.get(key, default)


def snapshot() -> dict[str, Any]:
    """A deep copy of every value, safe to keep and change."""
    return copy.deepcopy(_data)


def replace(values: dict[str, Any]) -> None:
    """Swap in a new set of values at once (the pool calls this, not tasks)."""
    global _data
    _data = dict(values)


def load_file(path: Path) -> dict[str, Any]:
    """Read the snapshot the master publishes; a missing file means no data."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: runtime data must be a JSON object")
    return values
