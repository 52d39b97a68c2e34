"""The loop of a master's thread that works through Redis (the job keeper,
the governor): a session until asked to stop, again after Redis failed
(with a growing wait) or after a bug (logged; a second later)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from .backoff import Backoff


def keep_session(stop: threading.Event, session: Callable[[], None], outage: Callable[[Exception], None],
                 wait_out: Callable[[float], object], guard: threading.Lock, log: logging.Logger, what: str,
                 longest_wait: float = 5.0) -> None:
    """Run SESSION until STOP. After a Redis or network failure: OUTAGE(err),
    then WAIT_OUT(seconds of back-off, up to LONGEST_WAIT). After anything
    else: the traceback, logged holding GUARD (the master's fork lock), and
    a second's wait."""
    backoff = Backoff(0.1, longest_wait)
    while not stop.is_set():
        try:
            session()
        except (redis.RedisError, OSError) as err:
            outage(err)
            wait_out(backoff.next())
        except Exception:
            with guard:
                log.exception("%s failed; restarting it", what)
            stop.wait(1.0)
        else:
            backoff.reset()
