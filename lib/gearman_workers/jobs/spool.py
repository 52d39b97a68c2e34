"""A failed run, handed from the child to its master: one file per run in
the pool's spool directory (SPOOL_DIR/POOL.spool; SPOOL_DIR is STATE_DIR
unless set). The child writes it
(temporary file, then rename) before it answers gearmand, so a failure
that must be retried is never only in memory; the master's keeper moves it
into Redis (store.record_failure, which ignores a run it already has) and
only then removes the file. Redis may be away for hours: the files wait.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ..config import Config
from ..files import atomic_write

log = logging.getLogger("gearman_workers.jobs")



@dataclasses.dataclass(frozen=True)
class Failure:
    chain: str
    attempt: int
    task: str
    unique: bytes  # the client's unique, or the run's (gw:...) when the child could not learn it
    payload: bytes
    retries: int
    outcome: str  # what it became: results.RETRYING or results.DEAD
    delay: float  # seconds from `ended` until the next run (RETRYING)
    error: str
    trace: str
    host: str
    pool: str
    started: float  # wall-clock seconds
    ended: float

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["unique"] = base64.b64encode(self.unique).decode()
        fields["payload"] = base64.b64encode(self.payload).decode()
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> Failure:
        fields: dict[str, Any] = json.loads(text)
        fields["unique"] = base64.b64decode(fields["unique"])
        fields["payload"] = base64.b64decode(fields["payload"])
        return cls(**fields)

    def run(self) -> dict[str, Any]:
        """What the chain's history keeps of this run."""
        return {"attempt": self.attempt, "host": self.host, "pool": self.pool, "started": self.started,
                "ended": self.ended, "error": self.error}


def spool_dir(config: Config) -> Path:
    return (config.spool_dir or config.state_dir) / f"{config.name}.spool"


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, failure: Failure) -> None:
        """The child's half."""
        atomic_write(self.directory / f"{failure.chain}.{failure.attempt}.json", failure.to_json())

    def pending(self) -> list[Path]:
        """The master's half: the files waiting, oldest first."""
        try:
            found = [entry for entry in self.directory.iterdir() if entry.suffix == ".json"]
        except FileNotFoundError:
            return []
        return sorted(found, key=_mtime)

    def load(self, path: Path) -> Failure | None:
        """The failure in PATH; None (and the file set aside) when it cannot be read."""
        try:
            return Failure.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.error("spool file %s cannot be read (%s); moved to %s.bad", path, err, path.name)
            path.rename(path.with_suffix(".bad"))
            return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
