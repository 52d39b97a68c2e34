"""The leader's Gearman client: submits a due run as a background job and
waits for gearmand's JOB_CREATED, so that a run is settled (store.py) only
once gearmand holds it. One connection, kept; on any failure the next
configured gearmand is tried."""

from __future__ import annotations

import contextlib
import socket

from .. import protocol as p
from ..config import Server

# A job's priority in gearmand's queue: its background submit packet.
PRIORITIES = {"high": p.SUBMIT_JOB_HIGH_BG, "normal": p.SUBMIT_JOB_BG, "low": p.SUBMIT_JOB_LOW_BG}


class SubmitFailed(Exception):
    """No gearmand took the job; the text says why."""


class Submitter:
    def __init__(self, servers: list[Server], timeout: float) -> None:
        self.servers, self.timeout = servers, timeout
        self._sock: socket.socket | None = None
        self._reader = p.PacketReader()
        self._next = 0

    def submit(self, task: str, unique: bytes, payload: bytes, priority: str = "normal") -> bytes:
        """The job handle gearmand gave the job; SubmitFailed when none of the servers took it."""
        errors = []
        for _ in self.servers:
            server = self.servers[self._next % len(self.servers)]
            try:
                return self._submit_to(server, PRIORITIES.get(priority, p.SUBMIT_JOB_BG), task, unique, payload)
            except (OSError, p.ProtocolError, SubmitFailed) as err:
                errors.append(f"{server}: {err}")
                self.close()
                self._next += 1
        raise SubmitFailed("; ".join(errors))

    def _submit_to(self, server: Server, kind: int, task: str, unique: bytes, payload: bytes) -> bytes:
        if self._sock is None:
            self._sock = socket.create_connection((server.host, server.port), timeout=self.timeout)
            self._reader = p.PacketReader()
        self._sock.sendall(p.request(kind, task.encode(), unique, payload))
        while True:
            data = self._sock.recv(4096)
            if not data:
                raise SubmitFailed("gearmand closed the connection")
            for kind, body in self._reader.feed(data):
                if kind == p.JOB_CREATED:
                    return body
                if kind == p.ERROR:
                    raise SubmitFailed(body.replace(b"\0", b": ").decode("utf-8", "replace"))

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
