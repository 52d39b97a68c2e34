"""scale: change the number of a pool's shared children.

Sent by `gm-ctl scale N [--host H] [--pool P]`. Not kept: a scale is for
the pools running when it is sent; a pool that starts later starts with
its configuration's size. A pool obeys it unless it autoscales (then its
configuration's bounds decide, and it refuses: reason "autoscaling");
N is from 0 to the pool's MAX_PROCESSES (gm-ctl asks for --allow-zero
before it sends 0)."""

from __future__ import annotations

from ..commands import Scale as ScaleTo
from ..config import MAX_PROCESSES
from .command import Pool
from .messages import BadMessage, Message
from .store import NotKept

NAME = "scale"


class Scale(NotKept):
    name = NAME

    def check(self, message: Message) -> None:
        if message.n is None or not 0 <= message.n <= MAX_PROCESSES:
            raise BadMessage(f"scale needs n from 0 to {MAX_PROCESSES}")

    def apply(self, pool: Pool, message: Message) -> None:
        if pool.autoscales():
            raise BadMessage("this pool autoscales: its min_processes and max_processes decide; change them "
                             "in its configuration and reload it", "autoscaling")
        pool.submit(ScaleTo(to=message.n))

    def describe(self, message: Message) -> str:
        return f"{NAME} {message.n}"


SCALE = Scale()


def message(n: int, hosts: tuple[str, ...] = (), pool: str | None = None) -> Message:
    return Message(NAME, n=n, hosts=hosts, pool=pool)
