"""A child's job records on their way to Redis (results.py says what a
record holds; runs.py when one is made).

Records go out in batches: when the oldest waiting is BATCH_AGE old, when
there are BATCH_SIZE of them, when the child falls idle
(Worker._on_idle_tick), or when a job of a task whose jobs take longer than
runs.LONG_JOB starts. A send costs more than a fast job; a batch costs one.
Each record is made only when its batch goes, and a later record of the
same job replaces it: a fast job costs one record, not two.

The connection's replies are switched off (CLIENT REPLY OFF) once the
first batch was answered without a refusal (an ACL, a full Redis): from
then on a batch costs a send, never a wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import redis

BATCH_AGE = 0.05
BATCH_SIZE = 100
TIMEOUT = 1.0  # seconds a child waits on Redis, per step

Maker = Callable[..., bytes]  # makes a record's JSON from its arguments when its batch goes


class Outage(Protocol):
    """Whether Redis may be tried now, and what to do when it fails (runs.ChildRedis)."""

    def reachable(self) -> bool: ...
    def answered(self) -> None: ...
    def lost(self, err: Exception) -> None: ...


class RecordBatch:
    def __init__(self, url: str, outage: Outage) -> None:
        self.url, self.outage = url, outage
        self._connection: Any = None  # a redis-py Connection: its handshake (AUTH, SELECT) is redis-py's
        self._proven = False
        self._batch: dict[bytes, tuple[Maker, tuple[Any, ...], int]] = {}  # key -> (maker, its args, seconds kept)
        # When the batch must go (monotonic): BATCH_AGE after its oldest
        # record, at once when it is full; never while it is empty.
        self.due_at = float("inf")

    def stage(self, key: bytes, make: Maker, args: tuple[Any, ...], ttl: int, now: float) -> None:
        """SET KEY to MAKE(*ARGS) for TTL seconds, with its batch."""
        batch = self._batch
        if not batch:
            self.due_at = now + BATCH_AGE
        batch[key] = (make, args, ttl)
        if len(batch) >= BATCH_SIZE:
            self.due_at = now

    def flush(self) -> None:
        batch, self._batch, self.due_at = self._batch, {}, float("inf")
        if not batch or not self.outage.reachable():
            return
        try:
            if self._connection is None:
                self._connection = redis.ConnectionPool.from_url(
                    self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT).make_connection()
                self._connection.connect()
            packed = b"".join(_set(key, make(*args), ttl) for key, (make, args, ttl) in batch.items())
            self._connection.send_packed_command([packed], check_health=False)
            if not self._proven:
                for _ in batch:
                    self._connection.read_response()  # raises the first refusal
                self._connection.send_packed_command([_command(b"CLIENT", b"REPLY", b"OFF")], check_health=False)
                self._proven = True
            self.outage.answered()
        except (redis.RedisError, OSError) as err:
            self.outage.lost(err)

    def disconnect(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
        self._connection, self._proven = None, False


def _set(key: bytes, value: bytes, ttl: int) -> bytes:
    """SET KEY VALUE EX TTL in Redis's protocol (RESP), written out here:
    redis-py's general packer costs more than the rest of a record."""
    ttl_text = b"%d" % ttl
    return b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nEX\r\n$%d\r\n%b\r\n" % (
        len(key), key, len(value), value, len(ttl_text), ttl_text)


def _command(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%b\r\n" % (len(word), word) for word in words)
