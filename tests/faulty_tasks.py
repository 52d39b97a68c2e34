"""Task code that misbehaves in every way production task code does: the
protections tests and bench/faults run the pool with these."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

from gearman_workers.procfs import resident_bytes
from gearman_workers.timelimit import JobTimeout

TASKS = ("pid", "sleep", "spin", "stubborn", "gil_hog", "leak", "segfault", "grandchild", "daemon", "ledger",
         "close_fds", "own_alarm", "stubborn_ledger", "blocked_ledger", "fork_and_exit", "shrugs")
LEAKED: list[bytearray] = []


def pid(worker, job):
    return str(os.getpid())


def sleep(worker, job):
    """Sleeps job.data seconds, then answers with its PID."""
    time.sleep(float(job.data))
    return str(os.getpid())


def spin(worker, job):
    """Busy forever in Python code (interruptible by the time limit)."""
    while True:
        pass


def stubborn(worker, job):
    """Ignores its time limit: swallows every exception and sleeps on."""
    while True:
        try:
            time.sleep(3600)
        except BaseException:  # swallowing everything is the point of this task
            pass


def shrugs(worker, job):
    """Catches its time limit's JobTimeout and returns as if nothing happened."""
    try:
        time.sleep(float(job.data))
    except JobTimeout:
        pass
    return "finished anyway"


def gil_hog(worker, job):
    """Stuck in C code that holds the GIL (catastrophic regex backtracking):
    no other thread runs until it ends (the heartbeat thread falls silent).
    Python-level signal handlers do run: the regex engine checks for them."""
    re.match(r"(a+)+$", "a" * 64 + "b")
    return "unreachable in practice"


def leak(worker, job):
    """Keeps 10 MiB per job; answers with the RSS in MiB after it."""
    block = bytearray(10 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    LEAKED.append(block)
    return f"{os.getpid()} {(resident_bytes() or 0) // (1024 * 1024)}"


def segfault(worker, job):
    """Dies as native code does on a bad pointer."""
    os.kill(os.getpid(), signal.SIGSEGV)


def grandchild(worker, job):
    """Forks a process that keeps running (and holds the child's sockets)."""
    forked = os.fork()
    if forked == 0:
        time.sleep(3600)
        os._exit(0)
    return str(forked)


def daemon(worker, job):
    """Double-forks a daemon in a session of its own (out of the child's
    process group); answers with the daemon's PID."""
    read, write = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        second = os.fork()
        if second == 0:
            time.sleep(3600)
            os._exit(0)
        os.write(write, str(second).encode())
        os._exit(0)
    os.waitpid(first, 0)
    os.close(write)
    answer = os.read(read, 32)
    os.close(read)
    return answer


def ledger(worker, job):
    """Echoes job.data after appending it to the file named by
    $GEARMAN_WORKERS_LEDGER, one line per run (bench/faults counts runs per job)."""
    with open(os.environ["GEARMAN_WORKERS_LEDGER"], "ab") as out:
        out.write(job.data + b"\n")
    return job.data


def close_fds(worker, job):
    """Closes every descriptor but the standard three (as daemonizing code
    does): the child can no longer answer gearmand."""
    os.closerange(3, 1024)
    return "unreachable answer"


def own_alarm(worker, job):
    """Takes SIGALRM for itself, as task code using signal.alarm for its own
    timeouts does, and leaves it so: job.data says how."""
    how = job.data.decode()
    if how == "raising-handler":
        def handler(signum, frame):
            raise RuntimeError("the task's own alarm")
        signal.signal(signal.SIGALRM, handler)
    elif how == "quiet-handler":
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
    elif how == "alarm":
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
        signal.alarm(3600)
    elif how == "setitimer":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
    elif how == "blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    return how


def stubborn_ledger(worker, job):
    """Records its run (a side effect), then ignores its time limit."""
    ledger(worker, job)
    stubborn(worker, job)


def blocked_ledger(worker, job):
    """Records its run, then blocks every signal it can (as C code that
    masks signals does) and sleeps: the soft limit cannot reach it. It
    leaves them blocked."""
    ledger(worker, job)
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    time.sleep(3600)


def fork_and_exit(worker, job):
    """The usual way to do work in a process of its own: fork, and the
    forked process leaves with sys.exit. Answers with that status."""
    forked = os.fork()
    if forked == 0:
        sys.exit(int(job.data))
    _, status = os.waitpid(forked, 0)
    return str(os.waitstatus_to_exitcode(status))
