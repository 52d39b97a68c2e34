"""A bare pygearman echo worker: the Python baseline the pool is compared to."""

import sys

import gearman


def echo(worker, job):
    return job.data


worker = gearman.GearmanWorker([sys.argv[1]])
worker.register_task(b"echo", echo)  # bytes: pygearman 0.2.6 asserts on str names
worker.work(poll_timeout=1.0)
