"""Loading the user's task code and preload hook, once, in the master."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from .config import Config

Task = Callable[[Any, Any], Any]


class TaskLoadError(Exception):
    """The task code cannot be imported or is not callable."""


def resolve(spec: str) -> Callable[..., Any]:
    """Import 'package.module:attr.path' and return the callable it names."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            target = getattr(target, part)
    except Exception as err:  # an import runs arbitrary code: report whatever it raised
        raise TaskLoadError(f"{spec}: {type(err).__name__}: {err}") from err
    if not callable(target):
        raise TaskLoadError(f"{spec}: {type(target).__name__} is not callable")
    return target


def add_python_path(config: Config) -> None:
    for entry in reversed(config.python_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def load_tasks(config: Config) -> dict[str, Task]:
    add_python_path(config)
    loaded = {}
    for name, spec in config.tasks.items():
        try:
            loaded[name] = resolve(spec.call)
        except TaskLoadError as err:
            raise TaskLoadError(f"cannot load task {name!r}: {err}") from err
    return loaded


def run_preload(config: Config) -> None:
    """Run the preload hook; what it builds is shared with every child."""
    if config.preload is None:
        return
    hook = resolve(config.preload)
    try:
        hook()
    except Exception as err:
        raise TaskLoadError(f"preload {config.preload} failed: {type(err).__name__}: {err}") from err
