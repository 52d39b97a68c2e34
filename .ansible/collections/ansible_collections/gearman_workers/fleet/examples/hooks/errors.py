"""Error reporting through the on_failure hook: each exception a task
raises (a time limit and a cancel too) reported once, with the job.

With sentry-sdk installed and SENTRY_DSN set, to Sentry (started in
post_fork: its transport thread, like any, does not survive fork);
otherwise one JSON line per failure to GW_ERROR_FILE, or the log.

    [hooks]
    post_fork = "errors:post_fork"
    on_failure = "errors:on_failure"
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from typing import Any

log = logging.getLogger("errors")
_sentry: Any = None


def post_fork(worker: Any) -> None:
    global _sentry
    if not os.environ.get("SENTRY_DSN"):
        return
    import sentry_sdk

    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], server_name=worker.config.hostname)
    _sentry = sentry_sdk


def on_failure(worker: Any, job: Any, exc: BaseException) -> None:
    where = {"task": job.task, "handle": job.handle, "unique": job.unique, "pool": worker.config.name}
    if _sentry is not None:
        with _sentry.new_scope() as scope:
            scope.set_context("gearman", where)
            _sentry.capture_exception(exc)
        return
    report = {**where, "error": f"{type(exc).__name__}: {exc}",
              "traceback": "".join(traceback.format_exception(exc))}
    if os.environ.get("GW_ERROR_FILE"):
        with open(os.environ["GW_ERROR_FILE"], "a", encoding="utf-8") as out:
            out.write(json.dumps(report) + "\n")
    else:
        log.error("job %s of %s failed: %s", job.handle, job.task, report["error"])
