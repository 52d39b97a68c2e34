"""A child's blanking of the sockets it inherited from a master's thread
(inherited.py). Loopback sockets this test makes; no server."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from gearman_workers.inherited import blank_sockets_to, peers_of


@pytest.fixture
def connected() -> Iterator[tuple[socket.socket, socket.socket, int]]:
    """A client socket, the server's end of it, and the server's port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted, server.getsockname()[1]


def test_the_socket_to_the_peer_becomes_dev_null_and_its_connection_ends(connected) -> None:
    client, accepted, port = connected
    with socket.create_server(("127.0.0.1", 0)) as other_server:
        other = socket.create_connection(other_server.getsockname())
        with other:
            assert blank_sockets_to(peers_of("localhost", port, None)) == 1
            assert os.readlink(f"/proc/self/fd/{client.fileno()}") == os.devnull
            assert os.readlink(f"/proc/self/fd/{other.fileno()}").startswith("socket:")
    accepted.settimeout(5)
    assert accepted.recv(1) == b""  # the only copy is gone: the server sees the end
    client.close()  # what an object holding it does later: closes /dev/null, nothing else


def test_a_forked_copy_blanked_leaves_the_parents_connection_working(connected) -> None:
    client, accepted, port = connected
    pid = os.fork()
    if pid == 0:
        os._exit(0 if blank_sockets_to(peers_of("127.0.0.1", port, None)) == 1 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    client.sendall(b"x")
    accepted.settimeout(5)
    assert accepted.recv(1) == b"x"


def test_no_peers_known_blanks_nothing(connected) -> None:
    client, _, _ = connected
    assert blank_sockets_to(peers_of(None, None, None)) == 0
    assert os.readlink(f"/proc/self/fd/{client.fileno()}").startswith("socket:")
