"""Where the job records live in Redis, under the pool's key prefix.

    PREFIX:jobs:leader          the leader's lease: its token, with a TTL
    PREFIX:jobs:due             sorted set: chain id -> when due (ms, Redis's clock)
    PREFIX:jobs:moving          sorted set: chain id -> when a claim of it lapses (ms)
    PREFIX:jobs:chain:ID        hash: one failed job and its runs (store.py)
    PREFIX:jobs:ended:ID:N      run N of chain ID has ended (a marker, with a TTL)
    PREFIX:jobs:dead            sorted set: chain id -> when it died (ms)
    PREFIX:jobs:dead-tasks      hash: task -> dead letters of it
    PREFIX:jobs:result:UNIQUE   a job's record and result (JSON, with keep_results as TTL)
    PREFIX:jobs:schedules:*     the periodic schedules' records (periodic/records.py)
"""

from __future__ import annotations


class JobKeys:
    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:jobs"
        self.leader = f"{self.base}:leader"
        self.due = f"{self.base}:due"
        self.moving = f"{self.base}:moving"
        self.dead = f"{self.base}:dead"
        self.dead_tasks = f"{self.base}:dead-tasks"
        self.schedules = f"{self.base}:schedules"

    def chain(self, chain: str) -> str:
        return f"{self.base}:chain:{chain}"

    def ended(self, chain: str, attempt: int) -> str:
        return f"{self.base}:ended:{chain}:{attempt}"

    def result(self, unique: str | bytes) -> str:
        text = unique if isinstance(unique, str) else unique.decode("utf-8", "replace")
        return f"{self.base}:result:{text}"
