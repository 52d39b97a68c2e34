#!/usr/bin/env python3
"""Write systemd/ from the gearman_workers role's unit templates and its
defaults: the units people read in the repository are the ones the role
installs (tests/test_role_files.py fails when they differ).

    .venv/bin/python scripts/render_units.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles/gearman_workers"
UNITS = ("gearman-workers@.service", "gearman-workers.service")


def role_defaults() -> dict:
    """The role's defaults, rendered against each other as Ansible does
    lazily (what needs the inventory stays empty: the units do not use it)."""
    raw = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    env = jinja2.Environment()
    values = dict(raw)
    for _ in range(3):
        values = {key: env.from_string(value).render(values) if isinstance(value, str) else value
                  for key, value in values.items()}
    return values


def render_unit(name: str, values: dict | None = None) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string((ROLE / "templates" / f"{name}.j2").read_text()).render(values or role_defaults())


def main() -> int:
    for name in UNITS:
        (ROOT / "systemd" / name).write_text(render_unit(name))
        print(f"wrote systemd/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
