#!/usr/bin/env python3
"""Write docs/reference/configuration.md from the option table in
lib/gearman_workers/config.py (OPTIONS): every key, its flag, its default
and what it does, as the code knows them. tests/test_config.py fails when
the page is stale.

    .venv/bin/python scripts/render_config_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from gearman_workers import config  # noqa: E402

PAGE = ROOT / "docs/reference/configuration.md"
INTRO = """# Configuration reference

Generated from the option table in `lib/gearman_workers/config.py` by
`scripts/render_config_reference.py`; do not edit by hand.

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
| `call` | `module:callable`, imported once in the master before the fork |
| `timeout` | the task's own time limit in seconds (0: none); default: `[pool] job_timeout` |
| `processes` | children of its own that register only this task (it leaves the shared children) |

`--task NAME=module:callable` adds or replaces one (repeatable).
"""


# Defaults the code derives at load time (config._complete), said in words.
DERIVED = {"processes": "CPU count", "hostname": "this host's short name", "pidfile": "STATE_DIR/NAME.pid"}


def _default(option: config.Option) -> str:
    value = option.default
    if value is None:
        return DERIVED.get(option.key, "(none)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render() -> str:
    parts = [INTRO]
    sections: dict[str, list[config.Option]] = {}
    for option in config.OPTIONS:
        if option.dest != "tasks":
            sections.setdefault(option.section, []).append(option)
    for section, options in sections.items():
        parts.append(f"## [{section}]\n\n| key | flag | default | meaning |\n|---|---|---|---|")
        for option in options:
            flag = "--task" if option.dest == "tasks" else option.flag
            parts.append(f"| `{option.key}` | `{flag}` | `{_default(option)}` | {option.help} |")
        parts.append("")
    parts.append(TASKS)
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
