"""The control commands by name: the one place a command's name leads to
its module. Adding a command is a module of its own (see command.py) and
one line here."""

from __future__ import annotations

from ..jobs.dead import DEAD
from .cancel import CANCEL
from .command import ControlCommand
from .data import DEL, SET
from .exit import EXIT
from .messages import BadMessage, Message
from .messages import decode as parse
from .pause import PAUSE, RESUME
from .scale import SCALE

COMMANDS: dict[str, ControlCommand] = {
    command.name: command for command in (EXIT, SET, DEL, SCALE, DEAD, PAUSE, RESUME, CANCEL)}


def command_of(message: Message) -> ControlCommand:
    """MESSAGE's command, after its own checks (BadMessage if it has none)."""
    command = COMMANDS.get(message.cmd)
    if command is None:
        raise BadMessage(f"unknown command {message.cmd!r} (expected one of {', '.join(COMMANDS)})", "unknown-command")
    command.check(message)
    return command


def decode(data: bytes, secret: bytes | None) -> Message:
    """A message as it came (see messages.decode), checked against its command too."""
    message = parse(data, secret)
    command_of(message)
    return message
