"""The deployment, end to end, on a fleet: four fresh systemd-booted
Debian 12 hosts (systemd-nspawn) on a private network of their own with no
way out, two gearmands (Redis beside the first) and two hosts for the
pools, deployed by the real `ansible-playbook site.yml` over ssh with an
inventory shaped like the production one, then checked as an operator
would."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gearman
import pytest

from helpers import (
    ROOT,
    FailoverStream,
    JobStream,
    children_of,
    free_port,
    gearmand_admin,
    gearmand_status,
    metric_samples,
    submit_background_raw,
    wait_for,
)

ROOTFS = Path(os.environ.get("GW_ROOTFS_CACHE", "/var/cache/gearman-workers-tests/rootfs-bookworm-v3.tar.zst"))
WORKERS = ("worker1", "worker2")
QUEUES = ("queue", "queue2")  # the gearmand hosts
POOLS = {"default": 2, "batch": 1}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-nspawn"),
                                reason="needs root and systemd-nspawn (tests/run installs it)")


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


class Network:
    """A Linux bridge holding the controller's address, and a network
    namespace per host wired to it by a veth pair."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.prefix = f"10.213.{os.getpid() % 250}"
        self.bridge = f"gwbr{tag}"
        self.namespaces: list[str] = []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        # .1 is the controller, an allowed client of gearmand and Redis in the
        # test inventory; .2 stands for a host outside every list.
        sh("ip", "addr", "add", f"{self.prefix}.2/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def attach(self, name: str, last_octet: int) -> str:
        namespace, veth = f"gw{self.bridge[4:]}{name}", f"gwv{self.bridge[4:]}{last_octet}"
        sh("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", namespace, "addr", "add", f"{self.prefix}.{last_octet}/24", "dev", "eth0")
        sh("ip", "-n", namespace, "link", "set", "eth0", "up")
        sh("ip", "-n", namespace, "link", "set", "lo", "up")
        return namespace

    def remove(self) -> None:
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class SystemdHost:
    def __init__(self, name: str, address: str, namespace: str, workdir: Path) -> None:
        self.name, self.address, self.namespace = name, address, namespace
        self.tree = workdir / name
        self.machine = f"gw{os.getpid()}{name}"
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self, key: Path, hosts: str) -> None:
        self.tree.mkdir()
        subprocess.run(["tar", "-C", str(self.tree), "-I", "zstd", "-xf", str(ROOTFS)], check=True)
        etc = self.tree / "etc"
        (etc / "machine-id").write_text(subprocess.run(["systemd-id128", "new"], capture_output=True,
                                                        text=True, check=True).stdout)
        (etc / "hostname").write_text(f"{self.name}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n{hosts}")
        subprocess.run(["ssh-keygen", "-q", "-A", "-f", str(self.tree)], check=True)
        ssh_dir = self.tree / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        (etc / "ssh/sshd_config.d/test.conf").write_text("PermitRootLogin prohibit-password\nUseDNS no\n")
        log = (self.tree.parent / f"nspawn-{self.name}.log").open("wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.tree), f"--machine={self.machine}", "--boot", "--register=no",
             "--keep-unit", "--console=read-only", "--link-journal=no", "--resolv-conf=off",
             # nftables on the host (the access firewall); the host's network namespace is its own.
             "--capability=CAP_NET_ADMIN",
             f"--network-namespace-path=/run/netns/{self.namespace}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True)

    def wait_booted(self) -> None:
        assert self.proc is not None
        self.leader = wait_for(lambda: next(iter(children_of(self.proc.pid)), 0), what=f"{self.name}'s init")
        wait_for(lambda: self.run("systemctl is-system-running").stdout.strip() in ("running", "degraded"),
                 timeout=60, what=f"{self.name} to boot")
        wait_for(lambda: reachable(self.address, 22), timeout=30, what=f"ssh on {self.name}")

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", "sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def out(self, command: str) -> str:
        result = self.run(command)
        assert result.returncode == 0, f"{self.name}: {command}: {result.stdout}{result.stderr}"
        return result.stdout.strip()

    def journal(self, since: str = "") -> str:
        window = f"--since '{since}'" if since else "-n 150"
        return self.run(f"journalctl --no-pager {window} -u 'gearman-workers*' -u gearman-job-server "
                        "-u redis-server").stdout

    def now(self) -> str:
        return self.out("date '+%Y-%m-%d %H:%M:%S'")

    def main_pid(self, pool: str = "default") -> int:
        return int(self.out(f"systemctl show -p MainPID --value gearman-workers@{pool}"))

    def shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.leader:
                self.run("systemctl poweroff", timeout=30)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.machine}", ignore_errors=True)


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


class Fleet:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.network = Network()
        self.gearmand_port, self.redis_port = free_port(), free_port()
        self.key = workdir / "id_ed25519"
        self.tls, self.credentials = workdir / "tls", workdir / "credentials"
        self.hosts: dict[str, SystemdHost] = {}
        for name, octet in (("queue", 10), ("queue2", 11), ("worker1", 21), ("worker2", 22)):
            address = f"{self.network.prefix}.{octet}"
            self.hosts[name] = SystemdHost(name, address, self.network.attach(name, octet), workdir)

    @property
    def queue(self) -> SystemdHost:
        return self.hosts["queue"]

    def boot(self) -> None:
        subprocess.run([str(ROOT / "tests/e2e/build-rootfs"), str(ROOTFS)], check=True)
        self.make_tls()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        names = "".join(f"{host.address} {host.name}\n" for host in self.hosts.values())
        for host in self.hosts.values():
            host.boot(self.key, names)
        for host in self.hosts.values():
            host.wait_booted()

    def make_tls(self) -> None:
        """A CA and a certificate for Redis on the queue host, as an operator makes them."""
        self.tls.mkdir()
        openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes"]
        subprocess.run([*openssl, "-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"],
                       cwd=self.tls, check=True, capture_output=True)
        subprocess.run([*openssl, "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=redis"],
                       cwd=self.tls, check=True, capture_output=True)
        (self.tls / "san").write_text(f"subjectAltName=IP:{self.queue.address}\n")
        subprocess.run(["openssl", "x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                        "-CAcreateserial", "-out", "redis.pem", "-days", "2", "-extfile", "san"],
                       cwd=self.tls, check=True, capture_output=True)

    def secret(self, name: str) -> str:
        """A password or secret the playbook generated on the controller."""
        return (self.credentials / name).read_text().strip()

    def playbook(self, *flags: str, play: str = "site.yml") -> subprocess.CompletedProcess:
        control_dir = tempfile.mkdtemp(prefix="gwcp", dir="/tmp")
        env = os.environ | {
            "GW_TEST_NET": self.network.prefix, "GW_TEST_SSH_KEY": str(self.key),
            "GW_TEST_GEARMAND_PORT": str(self.gearmand_port), "GW_TEST_REDIS_PORT": str(self.redis_port),
            "GW_TEST_TLS_DIR": str(self.tls), "GW_TEST_CREDENTIALS": str(self.credentials),
            "GW_TEST_WHEELHOUSE": str(self.workdir / "wheelhouse"),
            "ANSIBLE_HOME": str(self.workdir / "ansible"), "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
            "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "True",
            "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
        try:
            return subprocess.run(["ansible-playbook", "-i", "inventory/test", play, *flags], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=900)
        finally:
            shutil.rmtree(control_dir, ignore_errors=True)

    def redis_cli(self, *args: str, tls: bool = True) -> str:
        """redis-cli on the queue host (over TLS at its advertised address, or on loopback without)."""
        flags = f"--tls --cacert /etc/redis/tls/ca.pem -h {self.queue.address}" if tls else "-h 127.0.0.1"
        quoted = " ".join(f"'{arg}'" for arg in args)
        done = self.queue.run(f"redis-cli {flags} -p {self.redis_port} --no-auth-warning {quoted}")
        return done.stdout + done.stderr

    # --- gearmand's view, from the controller ----------------------------

    def admin(self, command: str, server: str = "queue") -> list[str]:
        return gearmand_admin(self.hosts[server].address, self.gearmand_port, command)

    def registered(self, pool: str = "default", server: str = "queue") -> dict[str, set[int]]:
        """Host name -> PIDs of the registered workers of POOL on SERVER's gearmand (gearadmin --workers)."""
        found: dict[str, set[int]] = {name: set() for name in WORKERS}
        for line in self.admin("workers", server):
            head, _, functions = line.partition(" : ")
            parts = head.split()[-1].split(":")
            if functions.strip() and len(parts) == 3 and parts[1] == pool:
                found.setdefault(parts[0], set()).add(int(parts[2]))
        return found

    def wait_serving(self, exclude: set[int] = frozenset()) -> dict[str, set[int]]:
        """Every pool of both worker hosts registered on both gearmands; the default pool's PIDs."""
        def ready() -> dict[str, set[int]] | None:
            views = {(pool, server): self.registered(pool, server) for pool in POOLS for server in QUEUES}
            full = all(len(view[host]) == POOLS[pool] for (pool, _), view in views.items() for host in WORKERS)
            pids = {pid for view in views.values() for pids in view.values() for pid in pids}
            return views["default", "queue"] if full and not pids & exclude else None
        return wait_for(ready, timeout=60, what="every pool registered on both worker hosts, on both gearmands")

    def client(self, server: str = "queue") -> gearman.GearmanClient:
        return gearman.GearmanClient([f"{self.hosts[server].address}:{self.gearmand_port}"])

    def status(self, server: str = "queue") -> dict[str, tuple[int, int, int]]:
        return gearmand_status(self.admin("status", server))

    def job(self, task: str, data: str) -> str:
        request = self.client().submit_job(task, data, poll_timeout=30)
        assert request.complete, f"{task} {data}: {request.state}"
        return request.result.decode()


def recap(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Host -> changed count, from the PLAY RECAP; fails on any failed or unreachable host."""
    found = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
             for m in re.finditer(r"^(\w+)\s*: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                                  result.stdout, re.M)}
    assert set(found) == {*QUEUES, *WORKERS}, result.stdout[-3000:] + result.stderr[-2000:]
    assert all(u == f == 0 for _, u, f in found.values()), result.stdout[-5000:] + result.stderr[-2000:]
    return {host: changed for host, (changed, _, _) in found.items()}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    the_fleet = Fleet(tmp_path_factory.mktemp("fleet", numbered=True))
    try:
        the_fleet.boot()
        started = time.monotonic()
        first = the_fleet.playbook()
        print(f"\nfirst deployment of 4 fresh hosts: {time.monotonic() - started:.0f} s")
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        assert all(recap(first).values())
        yield the_fleet
    except BaseException:
        for host in the_fleet.hosts.values():
            if host.leader:
                print(f"---- journal of {host.name} ----\n" + host.journal())
        raise
    finally:
        for host in the_fleet.hosts.values():
            host.shutdown()
        the_fleet.network.remove()


@pytest.fixture
def journal_on_failure(fleet: Fleet, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for host in fleet.hosts.values():
            print(f"---- journal of {host.name} ----\n" + host.journal())


pytestmark = [pytestmark, pytest.mark.usefixtures("journal_on_failure")]


def test_each_host_runs_what_its_groups_say(fleet: Fleet) -> None:
    queue, queue2 = fleet.queue, fleet.hosts["queue2"]
    for unit in ("gearman-job-server", "redis-server"):
        assert queue.out(f"systemctl is-active {unit}") == "active"
        assert queue.out(f"systemctl is-enabled {unit}") == "enabled"
    assert queue2.out("systemctl is-active gearman-job-server") == "active"
    assert queue2.run("systemctl is-active redis-server").stdout.strip() != "active"
    for host in (queue, queue2):
        assert host.run("systemctl is-active gearman-workers@default").stdout.strip() != "active"
    for name in WORKERS:
        host = fleet.hosts[name]
        for unit in ("gearman-workers", "gearman-workers@default", "gearman-workers@batch"):
            assert host.out(f"systemctl is-active {unit}") == "active", unit
            assert host.out(f"systemctl is-enabled {unit}") == "enabled", unit
        assert host.run("systemctl is-active gearman-job-server").stdout.strip() != "active"


def test_the_worker_hosts_installed_without_any_package_index(fleet: Fleet) -> None:
    for name in WORKERS:
        host = fleet.hosts[name]
        assert "default" not in host.out("ip route")  # no way out of the private network at all
        installed = host.out("/opt/gearman-workers/venv/bin/pip freeze --all --disable-pip-version-check")
        locked = host.out("cat /opt/gearman-workers/wheelhouse/requirements.lock")
        for line in locked.splitlines():
            assert line.split(" ")[0].replace("_", "-").lower() in installed.replace("_", "-").lower(), line
        release = host.out("readlink /opt/gearman-workers/venv")
        assert release.startswith("/opt/gearman-workers/releases/") and release.endswith("/venv")


def test_both_worker_hosts_serve_jobs_and_gearadmin_shows_them(fleet: Fleet) -> None:
    default = fleet.wait_serving()
    gearadmin = fleet.queue.out(f"gearadmin -h 127.0.0.1 -p {fleet.gearmand_port} --workers")
    for name in WORKERS:
        assert gearadmin.count(f" {name}:default:") == 2 and gearadmin.count(f" {name}:batch:") == 1, gearadmin
    answers: list[str] = []
    jobs = [threading.Thread(target=lambda i=i: answers.append(fleet.job("slow", "0.5"))) for i in range(8)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    served_by = {name for answer in answers for name, pids in default.items()
                 if int(answer.split()[-1]) in pids}
    assert len(answers) == 8 and served_by == set(WORKERS), (answers, default)
    assert fleet.job("reverse", "hello") == "olleh"


def test_gm_exit_for_one_host_restarts_only_that_hosts_pools(fleet: Fleet) -> None:
    fleet.wait_serving()
    worker1, worker2 = fleet.hosts["worker1"], fleet.hosts["worker2"]
    before = {(host.name, pool): host.main_pid(pool) for host in (worker1, worker2) for pool in POOLS}
    done = worker2.run("gm-exit --host worker1 --wait --timeout 60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worker1/batch: applied\nworker1/default: applied\n" in done.stdout  # each pool aimed at answered
    assert "waiting for 2 pool(s) to stop: worker1/batch, worker1/default" in done.stdout
    for pool in POOLS:
        wait_for(lambda pool=pool: worker1.main_pid(pool) not in (0, before["worker1", pool]), timeout=30,
                 what=f"worker1's pool {pool} to come back")
        assert worker2.main_pid(pool) == before["worker2", pool]
    fleet.wait_serving()


def test_an_operator_pauses_a_task_on_one_host_and_resumes_it(fleet: Fleet) -> None:
    """gm-ctl as the operator's Redis user, the pools as theirs: the role's ACLs allow a pause."""
    fleet.wait_serving()
    worker1 = fleet.hosts["worker1"]

    def offering(name: str) -> int:
        lines = fleet.queue.out(f"gearadmin -h 127.0.0.1 -p {fleet.gearmand_port} --workers").splitlines()
        return sum(1 for line in lines if f" {name}:default:" in line and " reverse" in f" {line.split(' : ')[-1]}")
    paused = worker1.run("gm-ctl pause reverse --host worker1")
    try:
        assert paused.returncode == 0 and "worker1/default: applied (reverse paused here)" in paused.stdout, \
            paused.stdout + paused.stderr
        wait_for(lambda: offering("worker1") == 0 and offering("worker2") == 2, timeout=10,
                 what="worker1's children to withdraw reverse")
        assert fleet.job("reverse", "hello") == "olleh"  # worker2 still serves it
    finally:
        resumed = worker1.run("gm-ctl resume reverse --host worker1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_for(lambda: offering("worker1") == 2, timeout=10, what="worker1's children to offer reverse again")


def test_an_operator_delays_a_job_and_the_leader_runs_it(fleet: Fleet) -> None:
    """gm-ctl submit as the operator's Redis user (HSET, EXPIRE, ZADD); the pools' leader submits it."""
    fleet.wait_serving()
    delayed = fleet.hosts["worker1"].run("gm-ctl submit reverse hello --in 1")
    assert delayed.returncode == 0 and "due at" in delayed.stdout, delayed.stdout + delayed.stderr
    chain = delayed.stdout.split()[1].rstrip(":")
    operator = ("--user", "operator", "--pass", fleet.secret("redis-operator"))
    wait_for(lambda: fleet.redis_cli(*operator, "hget", f"gearman-workers:jobs:chain:{chain}", "state").strip()
             == "done", timeout=30, what="the delayed job to have run")


def test_the_fleet_fires_the_schedule_every_pool_publishes(fleet: Fleet) -> None:
    """Four pools publish the same schedule through their ACL users; the one that leads fires it, and the
    operator lists it."""
    fleet.wait_serving()

    def fired() -> dict | None:
        shown = fleet.hosts["worker2"].run("gm-ctl schedule list --json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        document = json.loads(shown.stdout)
        rows = document["schedules"]
        # The leader may have changed since the last slot (earlier tests restart pools): the next slot says
        return document if rows and rows[0]["last_submitted"] and len(rows[0]["published_by"]) == 4 \
            and rows[0]["last_by"] == document["leader"] else None
    document = wait_for(fired, timeout=30, what="a slot of the heartbeat schedule fired by the leader")
    row = document["schedules"][0]
    assert row["name"] == "heartbeat" and row["when"] == "every 5 s" and row["differing"] == []
    assert document["leader"] in row["published_by"]


def test_check_diff_changes_nothing_and_shows_no_secret(fleet: Fleet) -> None:
    check = fleet.playbook("--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    assert recap(check) == {"queue": 0, "queue2": 0, "worker1": 0, "worker2": 0}, check.stdout[-5000:]
    for name in ("control.secret", "redis-pool-worker1", "redis-pool-worker2", "redis-operator"):
        assert fleet.secret(name) not in check.stdout + check.stderr, name


def test_second_playbook_run_changes_nothing(fleet: Fleet) -> None:
    second = fleet.playbook()
    assert second.returncode == 0, second.stdout[-3000:]
    assert recap(second) == {"queue": 0, "queue2": 0, "worker1": 0, "worker2": 0}, second.stdout[-5000:]


class Stream(JobStream):
    """Checked echo jobs from the controller, at most one per 5 ms (a steady
    stream that leaves the two cores to the playbook being measured), and
    gearadmin's view of the default pools."""

    PACE = 0.005

    def __init__(self, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet
        self.lowest: dict[str, int] = {name: POOLS["default"] for name in WORKERS}
        self.samples = 0

    def client(self) -> gearman.GearmanClient:
        return self.fleet.client()

    def job(self, client: gearman.GearmanClient, number: int) -> str | None:
        payload = f"rollout-{number}"
        request = client.submit_job("echo", payload, poll_timeout=60)
        if request.complete and request.result == payload.encode():
            return None
        return f"{payload}: {request.state} {request.result!r}"

    def sample(self) -> None:
        view = self.fleet.registered()
        self.samples += 1
        for name in WORKERS:
            self.lowest[name] = min(self.lowest[name], len(view[name]))


def test_a_rolling_code_rollout_under_load_loses_nothing(fleet: Fleet, tmp_path: Path) -> None:
    old = fleet.wait_serving()
    new_code = tmp_path / "tasks-v2"
    shutil.copytree(ROOT / "examples", new_code)
    tasks = new_code / "tasks.py"
    tasks.write_text(tasks.read_text().replace("hello from the master", "hello from v2"))
    with Stream(fleet) as stream:
        started = time.monotonic()
        rollout = fleet.playbook("-e", f"gearman_workers_task_code_path={new_code}/")
        took = time.monotonic() - started
    assert rollout.returncode == 0, rollout.stdout[-6000:] + rollout.stderr[-3000:]
    changed = recap(rollout)
    assert changed["queue"] == 0 and changed["worker1"] > 0 and changed["worker2"] > 0
    assert rollout.stdout.count("PLAY [Worker pools]") == 2  # one batch per host
    print(f"\nrolling rollout across 2 hosts: {stream.sent} jobs streamed, {len(stream.wrong)} lost/failed/wrong, "
          f"lowest registered per host {stream.lowest} of {POOLS['default']}, {stream.samples} samples, "
          f"playbook {took:.0f} s")
    assert stream.wrong == [] and stream.answered == stream.sent
    assert min(stream.lowest.values()) >= POOLS["default"], stream.lowest
    new = fleet.wait_serving()
    for name in WORKERS:
        assert new[name] and not new[name] & old[name], (old, new)
    answers = {fleet.job("whoami", str(i)) for i in range(20)}
    assert all(answer.endswith("hello from v2") for answer in answers), answers


METRICS_PORTS = {"default": 9810, "batch": 9811}  # the role's: its first port, then the next per pool


def scrape(host: SystemdHost, pool: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The pool's metrics, fetched on the host (they listen on its loopback only)."""
    return metric_samples(host.out(f"python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:"
                                   f"{METRICS_PORTS[pool]}/metrics\").read().decode())'"))


def sample(samples: dict, name: str, **labels: str) -> float:
    (value,) = [v for (n, found), v in samples.items() if n == name and labels.items() <= dict(found).items()]
    return value


def test_metrics_status_and_journal_priorities_on_the_hosts(fleet: Fleet) -> None:
    fleet.wait_serving()
    since = {name: fleet.hosts[name].now() for name in WORKERS}
    request = fleet.client().submit_job("fail", "on purpose", poll_timeout=30)
    assert request.state == "FAILED"
    failed = 0.0
    for name in WORKERS:
        host = fleet.hosts[name]
        for pool, count in POOLS.items():
            samples = scrape(host, pool)
            assert sample(samples, "gearman_workers_children_desired", pool=pool, host=name) == count
            assert sample(samples, "gearman_workers_children", state="idle", pool=pool, host=name) == count
            for server in QUEUES:  # registered on both gearmands
                address = f"{fleet.hosts[server].address}:{fleet.gearmand_port}"
                assert sample(samples, "gearman_workers_gearmand_up", server=address) == 1
            assert sample(samples, "gearman_workers_control_up") == 1
            if pool == "default":
                failed += sample(samples, "gearman_workers_jobs_total", task="fail", outcome="failed")
    assert failed == 1  # the one failing job, counted on the host that ran it
    errors = {name: fleet.hosts[name].run(f"journalctl --no-pager -p err -u 'gearman-workers@*' "
                                          f"--since '{since[name]}'").stdout for name in WORKERS}
    ran_it = [name for name, text in errors.items() if "task fail failed on job" in text]
    assert len(ran_it) == 1, errors
    assert "RuntimeError: asked to fail with b'on purpose'" in errors[ran_it[0]]  # the traceback is err too
    status = json.loads(fleet.hosts["worker1"].out("gm-ctl status --json"))
    for pool in POOLS:
        for name in WORKERS:
            listed = {c["pid"] for c in status["children"] if (c["host"], c["pool"]) == (name, pool)}
            assert listed == fleet.registered(pool)[name], (pool, name, status)


def test_a_wedged_master_is_restarted_by_the_watchdog(fleet: Fleet) -> None:
    worker = fleet.hosts["worker2"]
    fleet.wait_serving()
    old_main = worker.main_pid("batch")
    worker.out(f"kill -STOP {old_main}")  # its loop stops; its children still serve
    wait_for(lambda: worker.main_pid("batch") not in (0, old_main), timeout=60,
             what="systemd's watchdog to restart the stopped master")
    journal = worker.journal()
    assert "gearman-workers@batch.service: Watchdog timeout" in journal
    assert "Fatal Python error: Aborted" in journal  # and where it was stuck, from faulthandler
    fleet.wait_serving()


def test_restart_runs_the_cleanup_and_comes_back(fleet: Fleet) -> None:
    worker = fleet.hosts["worker1"]
    before = fleet.wait_serving()
    old_main = worker.main_pid()
    cleanups = worker.journal().count("leftover process(es) stopped")
    since = worker.now()
    worker.out("systemctl restart gearman-workers")  # every pool (PartOf=); returns before they are up
    wait_for(lambda: worker.main_pid() not in (0, old_main), timeout=30, what="the pool to be restarted")
    fleet.wait_serving(exclude=before["worker1"])
    assert worker.journal().count("leftover process(es) stopped") >= cleanups + 2  # one per pool
    # The masters (successors since the rollout) drained their children and
    # left: systemd waited for them and had nothing left to kill.
    assert "Killing process" not in worker.journal(since)


def test_kill_9_of_a_master_leaves_no_child_and_systemd_restarts_it(fleet: Fleet) -> None:
    worker = fleet.hosts["worker2"]
    children = fleet.wait_serving()["worker2"]
    old_main = worker.main_pid()
    worker.out(f"kill -9 {old_main}")
    wait_for(lambda: worker.main_pid() not in (0, old_main), timeout=30, what="systemd to restart the pool")
    fleet.wait_serving(exclude=children)
    for pid in children:
        assert worker.run(f"test -d /proc/{pid}").returncode != 0, f"old child {pid} still alive"


def test_systemctl_reload_hands_over_to_a_new_master_without_a_gap(fleet: Fleet) -> None:
    worker = fleet.hosts["worker1"]
    fleet.wait_serving()
    old_main = worker.main_pid()
    since = worker.now()
    worker.out("systemctl reload gearman-workers@default")
    new_main = worker.main_pid()
    assert new_main not in (0, old_main)
    assert worker.out("cat /run/gearman-workers/default.pid") == str(new_main)
    assert worker.out("systemctl is-active gearman-workers@default") == "active"
    wait_for(lambda: worker.run(f"test -d /proc/{old_main}").returncode != 0, what="the old master to leave")
    journal = worker.journal(since)
    assert f"handed over to master {new_main}" in journal
    assert "not our child" not in journal  # systemd supervises the new master as its own child
    assert "reception only permitted" not in journal  # the new master spoke only once in charge


def test_units_verify_cleanly_and_security_is_reported(fleet: Fleet) -> None:
    worker = fleet.hosts["worker1"]
    for unit in ("gearman-workers@default.service", "gearman-workers.service"):
        verify = worker.run(f"systemd-analyze verify {unit}")
        assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    # A call the filter refuses fails with EPERM (task code calling os.nice()), instead of killing the process.
    assert worker.out("systemctl show -p SystemCallErrorNumber --value gearman-workers@default") == "1"
    for unit in ("gearman-workers@default.service", "gearman-workers.service"):
        exposure = worker.run(f"systemd-analyze security --no-pager {unit}").stdout.strip()
        print("systemd-analyze security:", exposure.splitlines()[-1] if exposure else "n/a")
        level = re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", exposure)
        assert level and float(level.group(1)) <= 1.2, exposure[-2000:]


def connects_from(source: str, address: str, port: int) -> str:
    """What a TCP connect from SOURCE gets: 'accepted', 'refused' or 'timeout'."""
    with socket.socket() as sock:
        sock.settimeout(3)
        sock.bind((source, 0))
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
    return "accepted"


def test_only_the_inventorys_hosts_reach_gearmand_and_redis(fleet: Fleet) -> None:
    queue, outsider, controller = fleet.queue, f"{fleet.network.prefix}.2", f"{fleet.network.prefix}.1"
    for port in (fleet.gearmand_port, fleet.redis_port):
        assert connects_from(outsider, queue.address, port) == "refused"
        assert connects_from(controller, queue.address, port) == "accepted"
    for name in WORKERS:  # the worker hosts, by their inventory addresses
        probe = f"python3 -c 'import socket; socket.create_connection((\"{queue.address}\", {{}}), 3)'"
        for port in (fleet.gearmand_port, fleet.redis_port):
            assert fleet.hosts[name].run(probe.format(port)).returncode == 0, (name, port)
    assert connects_from(outsider, queue.address, 22) == "accepted"  # other ports are not the table's business
    rules = queue.out("nft list table inet gw_access_gearmand")
    assert f"tcp dport != {fleet.gearmand_port} accept" in rules and "reject with tcp reset" in rules
    verify = queue.run("systemd-analyze verify gearman-firewall@gearmand.service")
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr


def test_redis_speaks_tls_only_and_each_user_may_do_only_its_part(fleet: Fleet) -> None:
    queue, redis_cli = fleet.queue, fleet.redis_cli
    assert "PONG" not in redis_cli("ping", tls=False)
    assert "NOAUTH" in redis_cli("ping")  # the default user is off
    pool = ("--user", "pool-worker1", "--pass", fleet.secret("redis-pool-worker1"))
    assert redis_cli(*pool, "get", "gearman-workers:pool:worker1:default").strip()  # its heartbeat
    assert "NOPERM" in redis_cli(*pool, "set", "gearman-workers:pool:worker2:default", "{}")
    assert "NOPERM" in redis_cli(*pool, "publish", "gearman-workers", "exit")
    # Every key it may write expires; what concerns other hosts it cannot even read.
    assert "NOPERM" in redis_cli(*pool, "set", "gearman-workers:pool:worker1:spare", "{}")
    assert "OK" in redis_cli(*pool, "setex", "gearman-workers:pool:worker1:spare", "5", "{}")
    assert "NOPERM" in redis_cli(*pool, "get", "gearman-workers:pool:worker2:default")
    assert "NOPERM" in redis_cli(*pool, "hgetall", "gearman-workers:data:host:worker2")
    assert "NOPERM" not in redis_cli(*pool, "hgetall", "gearman-workers:data:host:worker1:pool:default")
    assert "NOPERM" in redis_cli(*pool, "set", "gearman-workers:elsewhere", "x")
    conf = queue.out("cat /etc/redis/redis.conf")
    assert fleet.secret("redis-pool-worker1") not in conf and "user default off" in conf
    assert "maxmemory 256mb\nmaxmemory-policy noeviction\n" in conf


def test_background_jobs_survive_a_kill_9_of_gearmand_and_run_exactly_once(fleet: Fleet) -> None:
    queue = fleet.queue
    for name in WORKERS:
        fleet.hosts[name].out("systemctl stop gearman-workers")
    payloads = [f"tally-{os.getpid()}-{i}" for i in range(50)]
    client = fleet.client()
    for payload in payloads:
        client.submit_job("tally", payload, background=True, wait_until_complete=False)
    assert fleet.status()["tally"][0] == 50
    old_gearmand = int(queue.out("systemctl show -p MainPID --value gearman-job-server"))
    queue.out(f"kill -9 {old_gearmand}")
    wait_for(lambda: int(queue.out("systemctl show -p MainPID --value gearman-job-server")) not in (0, old_gearmand)
             and reachable(queue.address, fleet.gearmand_port), timeout=30, what="systemd to restart gearmand")
    assert fleet.status()["tally"][0] == 50  # read back from its queue (libsqlite3)
    since = {name: fleet.hosts[name].now() for name in WORKERS}
    for name in WORKERS:
        fleet.hosts[name].out("systemctl start gearman-workers")
    wait_for(lambda: fleet.status().get("tally", (1, 0, 0))[0] == 0, timeout=60, what="the queue to drain")
    ran = [line.rsplit(" ", 1)[-1] for name in WORKERS
           for line in fleet.hosts[name].journal(since[name]).splitlines() if " tally tally-" in line]
    assert sorted(ran) == sorted(payloads)  # every job, once
    fleet.wait_serving()


class RegistrationWatch:
    """Samples, from the controller, how many children of the default pool
    each gearmand has registered (0 while one does not answer)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet, self.samples = fleet, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _count(self, server: str) -> int:
        try:
            return sum(len(pids) for pids in self.fleet.registered("default", server).values())
        except OSError:
            return 0

    def _run(self) -> None:
        while not self.stopping.wait(0.05):
            self.samples.append(tuple(self._count(server) for server in QUEUES))

    def __enter__(self) -> RegistrationWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


def pause_tally(fleet: Fleet) -> None:
    """No pool takes tally jobs: those submitted wait in gearmand's (persistent) queue."""
    paused = fleet.hosts["worker1"].run("gm-ctl pause tally")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    wait_for(lambda: all(fleet.status(server).get("tally", (0, 0, 0))[2] == 0 for server in QUEUES),
             what="no tally worker left on either gearmand")


def resume_tally_and_count_runs(fleet: Fleet, payloads: list[str]) -> list[str]:
    since = {name: fleet.hosts[name].now() for name in WORKERS}
    resumed = fleet.hosts["worker1"].run("gm-ctl resume tally")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_for(lambda: all(fleet.status(server).get("tally", (1, 0, 0))[0] == 0 for server in QUEUES), timeout=60,
             what="the tally jobs to drain")
    return [line.rsplit(" ", 1)[-1] for name in WORKERS for line in fleet.hosts[name].journal(since[name]).splitlines()
            if " tally tally-" in line and line.rsplit(" ", 1)[-1] in payloads]


def test_a_gearmand_killed_under_a_failing_over_stream_loses_nothing(fleet: Fleet) -> None:
    """kill -9 of the second gearmand: a client that fails over loses no job, the pools keep every child
    registered on the first, and the background jobs the second had persisted run once when it is back."""
    fleet.wait_serving()
    second = fleet.hosts["queue2"]
    pause_tally(fleet)
    payloads = [f"tally-{os.getpid()}-kill-{i}" for i in range(30)]
    client = fleet.client("queue2")
    for payload in payloads:
        client.submit_job("tally", payload, background=True, wait_until_complete=False)
    assert fleet.status("queue2")["tally"][0] == 30
    addresses = [f"{fleet.hosts[server].address}:{fleet.gearmand_port}" for server in QUEUES]
    with FailoverStream(addresses) as stream, RegistrationWatch(fleet) as watch:
        wait_for(lambda: stream.done > 100, what="the stream to flow")
        old = int(second.out("systemctl show -p MainPID --value gearman-job-server"))
        second.out(f"kill -9 {old}")
        wait_for(lambda: int(second.out("systemctl show -p MainPID --value gearman-job-server")) not in (0, old)
                 and reachable(second.address, fleet.gearmand_port), timeout=30, what="systemd to restart it")
        assert fleet.status("queue2")["tally"][0] == 30  # read back from its queue (libsqlite3)
        fleet.wait_serving()
        seen = stream.done
        wait_for(lambda: stream.done > seen + 100, what="the stream to go on")
    first_counts = [first for first, _ in watch.samples]
    print(f"kill -9 of a gearmand: {stream.done} jobs, {stream.lost} lost; the other had {min(first_counts)} "
          f"to {max(first_counts)} children registered in {len(watch.samples)} samples")
    assert stream.lost == 0 and min(first_counts) == 2 * len(WORKERS)
    assert sorted(resume_tally_and_count_runs(fleet, payloads)) == sorted(payloads)  # each once


def test_the_rolling_restart_keeps_a_server_and_every_job_and_applies_the_queue_limit(fleet: Fleet) -> None:
    """gearmand_restart.yml under a stream: never both servers without a worker, no job lost, the persisted
    background jobs kept; after it, gearmand_maxqueue holds again (nothing serves `flood`)."""
    fleet.wait_serving()
    pause_tally(fleet)
    payloads = {server: [f"tally-{os.getpid()}-roll-{server}-{i}" for i in range(10)] for server in QUEUES}
    for server, batch in payloads.items():
        client = fleet.client(server)
        for payload in batch:
            client.submit_job("tally", payload, background=True, wait_until_complete=False)
    addresses = [f"{fleet.hosts[server].address}:{fleet.gearmand_port}" for server in QUEUES]
    with FailoverStream(addresses) as stream, RegistrationWatch(fleet) as watch:
        wait_for(lambda: stream.done > 100, what="the stream to flow")
        # The paused tally jobs never drain: each server is restarted after the (shortened) drain timeout.
        rolled = fleet.playbook("-e", "gearmand_drain_timeout=5", play="gearmand_restart.yml")
        assert rolled.returncode == 0, rolled.stdout[-5000:] + rolled.stderr[-2000:]
        seen = stream.done
        wait_for(lambda: stream.done > seen + 100, what="the stream to go on")
    print(f"rolling restart: {stream.done} jobs, {stream.lost} lost; {len(watch.samples)} samples, the fewest "
          f"registered on either: {min(max(sample) for sample in watch.samples)}")
    assert stream.lost == 0
    assert all(max(sample) > 0 for sample in watch.samples)  # never no worker on both at once
    assert {server: fleet.status(server)["tally"][0] for server in QUEUES} == {server: 10 for server in QUEUES}
    answers = [submit_background_raw(fleet.queue.address, fleet.gearmand_port, b"flood", f"{n}".encode())
               for n in range(7)]
    assert answers == [b"JOB_CREATED"] * 5 + [b"ERROR QUEUE_ERROR"] * 2
    everything = [payload for batch in payloads.values() for payload in batch]
    assert sorted(resume_tally_and_count_runs(fleet, everything)) == sorted(everything)


# From here on the pools differ from POOLS.
def test_the_role_deploys_autoscaling_and_dedicated_children(fleet: Fleet) -> None:
    pools = {"gearman_workers_pools": [
        {"name": "default", "processes": 2},
        {"name": "batch", "min_processes": 1, "max_processes": 3, "scale_down_after": 5,
         "tasks": {"slow": "tasks:slow", "reverse": {"call": "tasks:reverse", "processes": 1}}}]}
    done = fleet.playbook("-e", json.dumps(pools))
    assert done.returncode == 0, done.stdout[-5000:]
    for name in WORKERS:
        config = fleet.hosts[name].out("cat /etc/gearman-workers/batch.toml")
        assert "min_processes = 1\nmax_processes = 3\nscale_down_after = 5" in config
        assert '"reverse" = { call = "tasks:reverse", processes = 1 }' in config

    def batch_workers() -> list[list[str]]:
        found = []
        for line in fleet.admin("workers"):
            head, _, functions = line.partition(" : ")
            if ":batch:" in head.split()[-1] and functions.strip():
                found.append(sorted(functions.split()))
        return sorted(found)

    wait_for(lambda: batch_workers() == [["reverse"], ["reverse"], ["slow"], ["slow"]],
             what="per host: one child only for reverse, one shared")
    assert fleet.job("reverse", "abc") == "cba"


# Last: it removes the batch pool the tests above expect.
def test_a_pool_removed_from_the_list_is_stopped_and_removed(fleet: Fleet) -> None:
    only_default = '{"gearman_workers_pools": [{"name": "default", "processes": 2}]}'
    done = fleet.playbook("-e", only_default)
    assert done.returncode == 0, done.stdout[-5000:]
    recap(done)
    for name in WORKERS:
        host = fleet.hosts[name]
        assert host.run("systemctl is-active gearman-workers@batch").stdout.strip() != "active"
        assert host.run("test -e /etc/gearman-workers/batch.toml").returncode != 0
        assert host.out("systemctl is-active gearman-workers@default") == "active"
    wait_for(lambda: not any(fleet.registered("batch").values()), what="the batch pool to leave gearmand")
