"""What both ends of the control channel need: a Redis connection and the
shared secret. The operator's commands (cli.py) and the pool's listener
(listener.py) import it from here, and neither imports the other."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import redis

from .. import inherited
from ..config import ConfigError


def read_secret(path: Path) -> bytes:
    """The shared secret; refused when group or others may read the file."""
    try:
        info = path.stat()
        secret = path.read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"[control] secret_file: {path}: {err.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"[control] secret_file: {path} is accessible by group or others "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
    if len(secret) < 16:
        raise ConfigError(f"[control] secret_file: {path} holds fewer than 16 bytes")
    return secret


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30, client_name=f"gearman-workers@{socket.gethostname()}")


def redis_peers(url: str) -> frozenset[inherited.Peer]:
    """The peer addresses a connection made by connect(URL) may have."""
    kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
    return inherited.peers_of(kwargs.get("host"), kwargs.get("port"), kwargs.get("path"))


def shown_url(url: str) -> str:
    """URL as a log line may show it: without the user and password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
