"""Loading the user's task code and preload hook, once, in the master."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from .command_task import Command, CommandTask
from .config import Config

Task = Callable[[Any, Any], Any]


class TaskLoadError(Exception):
    """The task code or the preload cannot be loaded. `temporary`: the code
    is there, but running it raised (a database down at import or in the
    preload); starting again later may work. Otherwise the code itself is
    wrong (a SyntaxError, a module that does not exist, a name that is not
    there or not callable): only a fix helps."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


# What a fix, not a retry, cures.
CODE_ERRORS = (SyntaxError, ImportError, AttributeError)


def _failed(spec: str, err: Exception) -> TaskLoadError:
    return TaskLoadError(f"{spec}: {type(err).__name__}: {err}", temporary=not isinstance(err, CODE_ERRORS))


def resolve(spec: str) -> Callable[..., Any]:
    """Import 'package.module:attr.path' and return the callable it names."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            target = getattr(target, part)
    except Exception as err:  # an import runs arbitrary code: report whatever it raised
        raise _failed(spec, err) from err
    if not callable(target):
        raise TaskLoadError(f"{spec}: {type(target).__name__} is not callable")
    return target


def _takes_worker_and_job(spec: str, task: Task) -> Task:
    """A task is called as task(worker, job): say so now, not at its first job."""
    try:
        inspect.signature(task).bind(None, None)
    except TypeError:
        raise TaskLoadError(f"{spec}: takes {inspect.signature(task)}; a task takes (worker, job)") from None
    except ValueError:
        pass  # no signature to read (some C callables): its first job will tell
    return task


def add_python_path(config: Config) -> None:
    for entry in reversed(config.python_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def load_tasks(config: Config) -> dict[str, Task]:
    add_python_path(config)
    loaded: dict[str, Task] = {}
    for name, spec in config.tasks.items():
        if spec.command:
            loaded[name] = CommandTask(Command(spec.command, spec.env, spec.cwd, spec.max_output))
            continue
        try:
            loaded[name] = _takes_worker_and_job(spec.call, resolve(spec.call))
        except TaskLoadError as err:
            raise TaskLoadError(f"cannot load task {name!r}: {err}", err.temporary) from err.__cause__
    return loaded


def run_preload(config: Config) -> None:
    """Run the preload hook; what it builds is shared with every child."""
    if config.preload is None:
        return
    hook = resolve(config.preload)
    try:
        hook()
    except Exception as err:
        failure = _failed(config.preload, err)
        raise TaskLoadError(f"preload failed: {failure}", failure.temporary) from err
