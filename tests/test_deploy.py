"""The deployment, end to end: a fresh systemd-booted Debian 12 test host
(systemd-nspawn), the real `ansible-playbook site.yml` over ssh, and the
checks an operator would make on the host."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, children_of, free_port, port_open, wait_for

ROOTFS = Path(os.environ.get("GW_ROOTFS_CACHE", "/var/cache/gearman-workers-tests/rootfs-bookworm.tar.zst"))
UNITS = ("gearman-job-server", "redis-server", "gearman-workers")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-nspawn"),
                                reason="needs root and systemd-nspawn (tests/run installs it)")


class SystemdHost:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tree = workdir / "rootfs"
        self.name = f"gwtest{os.getpid()}"
        self.ssh_port, self.gearmand_port, self.redis_port = free_port(), free_port(), free_port()
        self.key = workdir / "id_ed25519"
        self.tls = workdir / "tls"
        self.credentials = workdir / "credentials"
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def make_tls(self) -> None:
        """A CA and a certificate for Redis on 127.0.0.1, as an operator makes them."""
        self.tls.mkdir()
        openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes"]
        subprocess.run([*openssl, "-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"],
                       cwd=self.tls, check=True, capture_output=True)
        subprocess.run([*openssl, "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=redis"],
                       cwd=self.tls, check=True, capture_output=True)
        (self.tls / "san").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        subprocess.run(["openssl", "x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                        "-CAcreateserial", "-out", "redis.pem", "-days", "2", "-extfile", "san"],
                       cwd=self.tls, check=True, capture_output=True)

    def secret(self, name: str) -> str:
        """A password or secret the playbook generated on the controller."""
        return (self.credentials / name).read_text().strip()

    def boot(self) -> None:
        self.make_tls()
        subprocess.run([str(ROOT / "tests/e2e/build-rootfs"), str(ROOTFS)], check=True)
        self.tree.mkdir()
        subprocess.run(["tar", "-C", str(self.tree), "-I", "zstd", "-xf", str(ROOTFS)], check=True)
        etc = self.tree / "etc"
        (etc / "machine-id").write_text(subprocess.run(["systemd-id128", "new"], capture_output=True,
                                                        text=True, check=True).stdout)
        (etc / "hostname").write_text("testhost\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 testhost\n::1 localhost ip6-localhost\n")
        # The host shares this machine's network: packages must not start
        # their stock configs (standard ports) on install; the roles start
        # each service with its own configuration.
        policy = self.tree / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        self._share_trust(etc)
        subprocess.run(["ssh-keygen", "-q", "-A", "-f", str(self.tree)], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        ssh_dir = self.tree / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (etc / "ssh/sshd_config.d/test.conf").write_text(
            f"Port {self.ssh_port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n")
        log = (self.workdir / "nspawn.log").open("wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.tree), f"--machine={self.name}", "--boot", "--register=no",
             "--keep-unit", "--console=read-only", "--link-journal=no", "--resolv-conf=copy-host"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True)
        self.leader = wait_for(lambda: next(iter(children_of(self.proc.pid)), 0), what="the host's init")
        wait_for(lambda: self.run("systemctl is-system-running").stdout.strip() in ("running", "degraded"),
                 timeout=60, what="the test host to boot")
        wait_for(lambda: port_open(self.ssh_port), timeout=30, what="ssh on the test host")

    def _share_trust(self, etc: Path) -> None:
        """The host reaches package registries through this machine's
        network, so it trusts the CAs this machine trusts (some networks
        intercept TLS), and pip uses the system bundle."""
        extra = Path("/usr/local/share/ca-certificates")
        if extra.is_dir():
            shutil.copytree(extra, self.tree / extra.relative_to("/"), dirs_exist_ok=True)
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.exists():
            (etc / "ssl/certs").mkdir(parents=True, exist_ok=True)
            shutil.copy(bundle, etc / "ssl/certs/ca-certificates.crt")
        (etc / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", "sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def out(self, command: str) -> str:
        result = self.run(command)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        return result.stdout.strip()

    def journal(self) -> str:
        units = " ".join(f"-u {unit}" for unit in UNITS)
        return self.run(f"journalctl --no-pager -n 300 {units}; tail -n 20 /var/log/gearman-job-server/gearmand.log"
                        " /var/log/redis/redis-server.log").stdout

    def shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.run("systemctl poweroff", timeout=30)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)

    def playbook(self, *flags: str) -> subprocess.CompletedProcess:
        control_dir = tempfile.mkdtemp(prefix="gwcp", dir="/tmp")
        env = os.environ | {
            "GW_TEST_SSH_PORT": str(self.ssh_port), "GW_TEST_SSH_KEY": str(self.key),
            "GW_TEST_GEARMAND_PORT": str(self.gearmand_port), "GW_TEST_REDIS_PORT": str(self.redis_port),
            "GW_TEST_TLS_DIR": str(self.tls), "GW_TEST_CREDENTIALS": str(self.credentials),
            "ANSIBLE_HOME": str(self.workdir / "ansible"), "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
            "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "True",
            "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
        try:
            return subprocess.run(["ansible-playbook", "-i", "inventory/test", "site.yml", *flags], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=900)
        finally:
            shutil.rmtree(control_dir, ignore_errors=True)

    # --- what an operator looks at ---------------------------------------

    def main_pid(self) -> int:
        return int(self.out("systemctl show -p MainPID --value gearman-workers"))

    def worker_pids(self) -> set[int]:
        lines = self.out(f"gearadmin -h 127.0.0.1 -p {self.gearmand_port} --workers").splitlines()
        return {int(m.group(1)) for line in lines if (m := re.search(r":default:(\d+) : \S", line))}

    def job(self, task: str, data: str) -> str:
        return self.out(f"timeout 20 gearman -h 127.0.0.1 -p {self.gearmand_port} -f {task} {data}")

    def redis_cli(self, *args: str, tls: bool = True) -> subprocess.CompletedProcess:
        """redis-cli on the test host (TLS, checking the server against the CA)."""
        flags = "--tls --cacert /etc/gearman-workers/redis-ca.pem" if tls else ""
        quoted = " ".join(f"'{arg}'" for arg in args)
        return self.run(f"redis-cli -h 127.0.0.1 -p {self.redis_port} {flags} --no-auth-warning {quoted}")


def changed_count(result: subprocess.CompletedProcess) -> int:
    match = re.search(r"testhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", result.stdout)
    assert match, result.stdout[-3000:] + result.stderr[-2000:]
    return int(match.group(1))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdHost]:
    test_host = SystemdHost(tmp_path_factory.mktemp("testhost", numbered=True))
    try:
        test_host.boot()
        first = test_host.playbook()
        assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
        assert changed_count(first) > 0
        yield test_host
    except BaseException:
        if test_host.leader:
            print("---- journal of the test host ----\n" + test_host.journal())
        raise
    finally:
        test_host.shutdown()


@pytest.fixture
def journal_on_failure(host: SystemdHost, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("---- journal of the test host ----\n" + host.journal())


pytestmark = [pytestmark, pytest.mark.usefixtures("journal_on_failure")]


def wait_pool(host: SystemdHost, exclude: set[int] = frozenset()) -> set[int]:
    def ready() -> set[int] | None:
        pids = host.worker_pids()
        return pids if len(pids) == 2 and not pids & exclude else None
    return wait_for(ready, timeout=30, what="2 registered workers on the test host")


def test_services_are_active_and_enabled(host: SystemdHost) -> None:
    for unit in UNITS:
        assert host.out(f"systemctl is-active {unit}") == "active"
        assert host.out(f"systemctl is-enabled {unit}") == "enabled"


def test_a_job_goes_through_and_gearadmin_shows_the_workers(host: SystemdHost) -> None:
    wait_pool(host)
    assert host.job("reverse", "hello") == "olleh"
    assert "'setting'" not in host.job("setting", "color")  # task code sees runtime data (unset here)


def test_restart_runs_the_cleanup_and_comes_back(host: SystemdHost) -> None:
    before = wait_pool(host)
    old_main = host.main_pid()
    cleanups = host.journal().count("leftover process(es) stopped")
    host.out("systemctl restart gearman-workers")
    assert host.main_pid() not in (0, old_main)
    wait_pool(host, exclude=before)
    assert host.journal().count("leftover process(es) stopped") == cleanups + 1


def test_kill_9_of_the_master_leaves_no_child_and_systemd_restarts_it(host: SystemdHost) -> None:
    children = wait_pool(host)
    old_main = host.main_pid()
    host.out(f"kill -9 {old_main}")
    wait_for(lambda: host.main_pid() not in (0, old_main), timeout=30, what="systemd to restart the pool")
    wait_pool(host, exclude=children)
    for pid in children:
        assert host.run(f"test -d /proc/{pid}").returncode != 0, f"old child {pid} still alive"
    assert host.job("echo", "again") == "again"


def test_gm_exit_drains_and_systemd_brings_new_code(host: SystemdHost) -> None:
    children = wait_pool(host)
    old_main = host.main_pid()
    done = host.run("gm-exit --wait --timeout 60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "received by 1 listener(s)" in done.stdout
    wait_for(lambda: host.main_pid() not in (0, old_main), timeout=30, what="the pool to come back")
    wait_pool(host, exclude=children)
    assert host.job("reverse", "abc") == "cba"


def test_units_verify_cleanly_and_security_is_reported(host: SystemdHost) -> None:
    verify = host.run("systemd-analyze verify gearman-workers.service")
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    exposure = host.run("systemd-analyze security --no-pager gearman-workers.service").stdout.strip()
    print("systemd-analyze security:", exposure.splitlines()[-1] if exposure else "n/a")
    level = re.search(r"Overall exposure level for gearman-workers.service: ([\d.]+)", exposure)
    assert level and float(level.group(1)) <= 1.2, exposure[-2000:]


def test_redis_speaks_tls_only_and_each_user_may_do_only_its_part(host: SystemdHost) -> None:
    plain = host.redis_cli("ping", tls=False)
    assert "PONG" not in plain.stdout
    assert "NOAUTH" in host.redis_cli("ping").stdout + host.redis_cli("ping").stderr  # the default user is off
    pool = ("--user", "pool-testhost", "--pass", host.secret("redis-pool-testhost"))
    assert host.redis_cli(*pool, "get", "gearman-workers:pool:testhost:default").stdout.strip()  # its heartbeat
    other = host.redis_cli(*pool, "set", "gearman-workers:pool:otherhost:default", "{}")
    assert "NOPERM" in other.stdout + other.stderr
    assert "NOPERM" in host.redis_cli(*pool, "publish", "gearman-workers", "exit").stdout
    conf = host.out("cat /etc/redis/redis.conf")
    assert host.secret("redis-pool-testhost") not in conf and "user default off" in conf


def test_check_diff_shows_no_secret(host: SystemdHost) -> None:
    check = host.playbook("--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    for name in ("control.secret", "redis-pool-testhost", "redis-operator"):
        assert host.secret(name) not in check.stdout + check.stderr, name


def test_second_playbook_run_changes_nothing(host: SystemdHost) -> None:
    second = host.playbook()
    assert second.returncode == 0, second.stdout[-3000:]
    assert changed_count(second) == 0, second.stdout[-5000:]
