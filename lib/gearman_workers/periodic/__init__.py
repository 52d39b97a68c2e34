"""Periodic schedules: `[schedules]` of the pool configuration, fired by the
fleet's jobs leader, each slot once (docs/schedules.md).

    spec.py     a schedule as configured, and its slots in time
    records.py  what Redis keeps of them (under PREFIX:jobs:, jobs/keys.py)
    firing.py   the keeper's part: publish, follow, and fire as the leader
"""
