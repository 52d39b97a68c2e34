"""gearmand's text admin protocol: what is queued, per function, and
dropping one queued job.

`status` answers one line per function, ``NAME\\tTOTAL\\tRUNNING\\tWORKERS``,
then a line with a single dot. TOTAL counts the jobs gearmand holds for the
function, RUNNING those of them a worker has taken: TOTAL - RUNNING wait.
"""

from __future__ import annotations

import dataclasses
import socket

MAX_ANSWER = 4 * 1024 * 1024  # a gearmand with tens of thousands of functions still fits
MAX_DIGITS = 18  # counts fit a 64-bit integer; anything longer is not a count gearmand keeps


class AdminError(OSError):
    """gearmand did not answer, or not with a status table."""


@dataclasses.dataclass(frozen=True)
class FunctionStatus:
    total: int
    running: int
    workers: int

    @property
    def waiting(self) -> int:
        return max(0, self.total - self.running)


def parse_status(answer: bytes) -> dict[str, FunctionStatus]:
    table: dict[str, FunctionStatus] = {}
    for line in answer.decode("utf-8", "replace").splitlines():
        if line == ".":
            return table
        fields = line.split("\t")
        if len(fields) != 4 or not all(_count(f) for f in fields[1:]):
            raise AdminError(f"not a status line: {line[:80]!r}")
        table[fields[0]] = FunctionStatus(int(fields[1]), int(fields[2]), int(fields[3]))
    raise AdminError("status answer ended before its closing '.'")


def _count(field: str) -> bool:
    """ASCII digits, and not too many (str.isdigit takes '²' and int() then fails)."""
    return 0 < len(field) <= MAX_DIGITS and field.isascii() and field.isdigit()


def _connect(address: tuple, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def cancel_job(host: str, port: int, handle: str, timeout: float) -> bool:
    """`cancel job HANDLE`: gearmand drops the job and fails its clients
    (a bare WORK_FAIL). True when it knew the job. Careful: gearmand 1.1
    drops a running job too (its worker runs on, its answer finds no job),
    so only what no child runs is cancelled here (control/cancel.py)."""
    if not handle or any(c.isspace() for c in handle):
        raise AdminError(f"not a job handle: {handle[:80]!r}")
    address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
    with _connect(address, timeout) as sock:
        sock.sendall(f"cancel job {handle}\n".encode())
        answer = bytearray()
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk or len(answer) > 4096:
                raise AdminError("no answer to cancel job")
            answer += chunk
    return answer.startswith(b"OK")


def status(address: tuple, timeout: float) -> dict[str, FunctionStatus]:
    """Ask the gearmand at ADDRESS (a resolved socket address) for its
    status table; AdminError (an OSError) when it cannot."""
    with _connect(address, timeout) as sock:
        sock.sendall(b"status\n")
        answer = bytearray()
        while not (answer.endswith(b"\n.\n") or answer == b".\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise AdminError("connection closed before the end of the status table")
            answer += chunk
            if len(answer) > MAX_ANSWER:
                raise AdminError(f"status answer larger than {MAX_ANSWER} bytes")
    return parse_status(bytes(answer))
