"""Client failover with two gearmands (docs/gearmand-ha.md), with the real
clients from Debian's packages: libgearman's C client, PHP's gearman
extension, Perl's Gearman::Client and python-gearman, each given both
servers. With one server down, every one of them submits to the other.
A server that dies with a foreground job in it fails that job in every
client: resubmitting is the application's part."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import EXAMPLES, ROOT, Gearmand, Pool, free_port, wait_for

CLIENTS = ROOT / "tests/clients"
PYTHON_CLIENT = ("import sys, gearman; r = gearman.GearmanClient(sys.argv[1].split(',')).submit_job(sys.argv[2], "
                 "sys.argv[3], poll_timeout=10); sys.stdout.write(r.result.decode()) if r.complete else sys.exit(1)")


def client_commands(tmp_path: Path) -> dict[str, list[str]]:
    """Name -> the command that submits one foreground job: SERVERS TASK PAYLOAD follow."""
    for program in ("gcc", "php", "perl"):
        if not shutil.which(program):
            pytest.skip(f"{program} is not installed (tests/run installs it)")
    c_client = tmp_path / "submit"
    subprocess.run(["gcc", "-O2", "-o", str(c_client), str(CLIENTS / "submit.c"), "-lgearman"], check=True)
    return {"C libgearman": [str(c_client)], "PHP gearman": ["php", str(CLIENTS / "submit.php")],
            "Perl Gearman::Client": ["perl", str(CLIENTS / "submit.pl")],
            "python-gearman": [sys.executable, "-c", PYTHON_CLIENT]}


def submit(command: list[str], servers: str, task: str, payload: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, servers, task, payload], capture_output=True, text=True, timeout=60)


def test_every_client_given_both_servers_submits_to_the_live_one(two_gearmands: list[Gearmand], tmp_path: Path) -> None:
    commands = client_commands(tmp_path)
    servers = two_gearmands
    live = servers[1]
    pool = Pool(live, tmp_path, name="failover", processes=2, config=EXAMPLES / "gearman-workers.toml")
    pool.start()
    try:
        servers[0].stop()  # down: its port refuses connections
        dead = servers[0].address
        for name, command in commands.items():
            for order in ((dead, live.address), (live.address, dead)):
                answers = [submit(command, ",".join(order), "reverse", f"hello {n}") for n in range(5)]
                assert [a.stdout for a in answers] == [f"{n} olleh" for n in range(5)], (name, order, answers[0])
    finally:
        pool.stop()


def test_a_server_that_dies_with_a_job_in_it_fails_that_job_in_every_client(two_gearmands: list[Gearmand],
                                                                            tmp_path: Path) -> None:
    commands = client_commands(tmp_path)
    servers = two_gearmands
    both = ",".join(server.address for server in servers)
    for name, command in commands.items():
        for server in servers:
            if not server.proc or server.proc.poll() is not None:
                server.start()
        pool = Pool(servers[0], tmp_path, "--servers", both, name=f"dies{free_port()}", processes=2,
                    config=EXAMPLES / "gearman-workers.toml")
        pool.start()
        try:
            client = subprocess.Popen([*command, both, "slow", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            holder = wait_for(lambda: next((s for s in servers if s.status().get("slow", (0, 0, 0))[1]), None),
                              what=f"{name}'s job to run")
            holder.stop(signal.SIGKILL)
            out, err = client.communicate(timeout=60)
            assert client.returncode != 0 and not out, (name, out, err)  # no client resubmits it by itself
        finally:
            pool.stop()
