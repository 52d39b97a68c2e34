"""systemd's sd_notify protocol: a datagram to $NOTIFY_SOCKET, if set.

Twenty lines do not justify a dependency (the sdnotify package is unkept
since 2017 and swallows errors; systemd-python needs libsystemd headers).
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        address = self.socket_path = os.environ.pop("NOTIFY_SOCKET", "") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._last_status = ""
        self.muted = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: object) -> None:
        if self._address is None or self.muted:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message.encode(), self._address)
            except OSError:
                pass  # systemd gone or not listening: nothing useful to do

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(status=text)
