"""systemd's sd_notify protocol: a datagram to $NOTIFY_SOCKET, if set, and
the watchdog that goes with it.

Twenty lines do not justify a dependency (the sdnotify package is unkept
since 2017 and swallows errors; systemd-python needs libsystemd headers).
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        address = self.socket_path = os.environ.pop("NOTIFY_SOCKET", "") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._last_status = ""
        self.muted = False
        self.watchdog_usec = _watchdog_usec(os.environ.pop("WATCHDOG_USEC", ""), os.environ.pop("WATCHDOG_PID", ""))
        self._watchdog_next = 0.0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def environment(self) -> dict[str, str]:
        """What a successor needs to speak to the same systemd (it becomes
        the main process: WATCHDOG_PID would name us, so it is left out)."""
        env = {"NOTIFY_SOCKET": self.socket_path} if self.socket_path else {}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        return env

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

    # --- the watchdog ----------------------------------------------------------
    # systemd restarts the service when WATCHDOG=1 does not come at least
    # once per WatchdogSec; we send it four times as often, from the master's
    # main loop only, so that a wedged loop is what stops it.

    def watchdog_due(self) -> float | None:
        """When the next WATCHDOG=1 is due (monotonic), or None: no watchdog."""
        if not self.watchdog_usec or self._address is None or self.muted:
            return None
        return self._watchdog_next

    def kick_watchdog(self) -> None:
        now = time.monotonic()
        if self.watchdog_due() is not None and now >= self._watchdog_next:
            self.send(watchdog=1)
            self._watchdog_next = now + self.watchdog_usec / 1e6 / 4


def _watchdog_usec(usec: str, pid: str) -> int:
    """WATCHDOG_USEC, when it is meant for this process."""
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0
    return int(usec)
