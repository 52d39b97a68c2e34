"""A bare pygearman echo worker: the Python baseline the pool is compared to.

    pygearman_worker.py HOST:PORT [FUNCTION]
"""

import sys

import gearman


def echo(worker, job):
    return job.data


worker = gearman.GearmanWorker([sys.argv[1]])
function = sys.argv[2] if len(sys.argv) > 2 else "echo"
worker.register_task(function.encode(), echo)  # bytes: pygearman 0.2.6 asserts on str names
worker.work(poll_timeout=1.0)
