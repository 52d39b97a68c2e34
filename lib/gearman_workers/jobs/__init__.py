"""The life of a job beyond one attempt: retries, dead letters, results.

    policy.py   what a failure becomes (retry when, or dead), Permanent
    spool.py    a failure as the child hands it over: a file in the state directory
    store.py    the Redis records and the scripts that change them atomically
    keeper.py   the master's thread: spool to Redis, the leader's lease, due jobs to gearmand
    submit.py   the leader's Gearman client (SUBMIT_JOB_BG)
    runs.py     the child's side: a leader's run looked up and marked ended, failures spooled, records made
    batch.py    the child's records on their way to Redis, in batches
    results.py  reading a job's record (gm-ctl job, and clients)
    dead.py     the dead letters: gm-ctl dead, and the signed command that changes them

The child never waits on Redis for a first attempt: a failure goes to the
spool (a file rename), results go out on a connection whose replies are
read later. docs/jobs.md says what survives which outage.
"""
