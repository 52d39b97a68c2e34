"""The least a Python echo worker can be: one connection, the worker side of
the protocol written out by hand, nothing around the job (no time limit, no
poison check, no scoreboard, no reconnect). Not something to run jobs
with: it is the floor any Python worker stands on, measured beside the pool
to show how much of the pool's distance to C is Python's own.

    python_floor_worker.py HOST:PORT [FUNCTION]
"""

import os
import socket
import struct
import sys

HEADER = struct.Struct(">4sII")
NOOP, NO_JOB, JOB_ASSIGN_UNIQ = 6, 10, 31


def request(kind: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return HEADER.pack(b"\0REQ", kind, len(body)) + body


def main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    function = (sys.argv[2] if len(sys.argv) > 2 else "echo").encode()
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    grab, pre_sleep = request(30), request(4)
    sock.sendall(request(1, function) + request(22, b"floor:%d" % os.getpid()) + grab)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    pending = b""
    while True:
        size = sock.recv_into(buffer)
        if not size:
            return
        data = pending + view[:size].tobytes()
        at = 0
        while len(data) - at >= HEADER.size:
            _, kind, length = HEADER.unpack_from(data, at)
            end = at + HEADER.size + length
            if end > len(data):
                break
            if kind == NOOP:
                sock.sendall(grab)
            elif kind == NO_JOB:
                sock.sendall(pre_sleep)
            elif kind == JOB_ASSIGN_UNIQ:
                handle, _, _, payload = data[at + HEADER.size:end].split(b"\0", 3)
                sock.sendall(request(13, handle, payload) + grab)
            at = end
        pending = data[at:]


if __name__ == "__main__":
    main()
