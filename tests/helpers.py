"""What the integration tests share: real servers on free loopback ports,
pools run as real processes, and waiting on what a user would observe."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gearman

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"
WAIT = 10.0


def load_script(path: str) -> Any:
    """A script of this repository (scripts/, a role's files/) as a module."""
    script = ROOT / path
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll PREDICATE until it returns something true; fail after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def needs_program(name: str, package: str) -> None:
    """Skip, in one line, a test whose server or tool is not installed."""
    if shutil.which(name) is None:
        import pytest  # here: the benchmarks share these helpers, not the test runner

        pytest.skip(f"needs {name}: apt-get install {package} (tests/run installs it)")


def needs_root(why: str) -> None:
    """Skip, in one line, a test that must act as another user."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip(f"needs root: {why}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie or a vanished PID is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between the open and the read
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def process_table() -> dict[int, tuple[str, int, int]]:
    """Every process now: pid -> (state, parent, process group), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def descendants(roots: set[int]) -> list[int]:
    """Every process below ROOTS, zombies too (an unreaped child is still in the table)."""
    table = process_table()
    found, frontier = [], set(roots)
    while frontier:
        below = [pid for pid, (_, parent, _) in table.items() if parent in frontier]
        found += below
        frontier = set(below)
    return found


def children_of(parent: int) -> set[int]:
    return {pid for pid, (state, ppid, _) in process_table().items() if ppid == parent and state not in "ZX"}


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoopbackServer:
    """A server of our own on a free loopback port, started and stopped by PID."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, what=f"{self.name} to listen")
        assert self.proc.poll() is None, f"{self.name} did not start"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)


def gearmand_admin(host: str, port: int, command: str) -> list[str]:
    """The lines of gearmand's answer to a text admin command (workers, status)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [line for line in data.decode().splitlines() if line and line != "."]


def gearmand_status(lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """function -> (queued, running, available workers), from the admin `status` answer."""
    table = {}
    for line in lines:
        name, total, running, workers = line.split("\t")
        table[name] = (int(total), int(running), int(workers))
    return table


class FailoverStream:
    """A client that submits foreground echo jobs one after another and,
    when a server fails it, submits the same job to the other: what a
    client with two servers does. Counts what never came back right."""

    def __init__(self, addresses: list[str], task: str = "echo") -> None:
        self.clients = [gearman.GearmanClient([address]) for address in addresses]
        self.task = task
        self.done = self.lost = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            payload = f"job {number}".encode()
            for attempt in range(10):
                client = self.clients[(number + attempt) % len(self.clients)]
                try:
                    request = client.submit_job(self.task, payload, poll_timeout=5, max_retries=0)
                except Exception:
                    continue  # that server is down: the other one
                if request.complete and request.result == payload:
                    self.done += 1
                    break
            else:
                self.lost += 1
            number += 1

    def __enter__(self) -> FailoverStream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)


def submit_background_raw(host: str, port: int, task: bytes, data: bytes) -> bytes:
    """SUBMIT_JOB_BG (DATA as its unique too) on a connection of its own: JOB_CREATED, or ERROR and its code."""
    import struct

    body = task + b"\0" + data + b"\0" + data
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"\0REQ" + struct.pack(">II", 18, len(body)) + body)
        header = sock.recv(12, socket.MSG_WAITALL)
        kind, size = struct.unpack(">II", header[4:])
        answer = sock.recv(size, socket.MSG_WAITALL) if size else b""
    return b"JOB_CREATED" if kind == 8 else b"ERROR " + answer.split(b"\0")[0]


class JobStream:
    """While a `with` block runs: one client thread sending jobs back to back
    (at most one per PACE seconds), each checked by `job`, and a thread
    calling `sample` every SAMPLE seconds (gearadmin's view of the pool)."""

    PACE = 0.0
    SAMPLE = 0.05

    def __init__(self) -> None:
        self.sent = self.answered = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._submit), threading.Thread(target=self._sample)]

    def client(self) -> gearman.GearmanClient:
        raise NotImplementedError

    def job(self, client: gearman.GearmanClient, number: int) -> str | None:
        """Send job NUMBER and check its answer: None if right, else what was wrong."""
        raise NotImplementedError

    def sample(self) -> None:
        raise NotImplementedError

    def _submit(self) -> None:
        client = self.client()
        while not self._stop.wait(self.PACE):
            number, self.sent = self.sent, self.sent + 1
            problem = self.job(client, number)
            if problem is None:
                self.answered += 1
            else:
                self.wrong.append(problem)

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE):
            self.sample()

    def __enter__(self) -> JobStream:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.answered >= 20, what="the stream to flow")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


class Gearmand(LoopbackServer):
    """A gearmand of our own on a free loopback port."""

    name = "gearmand"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return ["gearmand", "--listen=127.0.0.1", f"--port={self.port}", "--threads=0",
                f"--log-file={self.workdir / 'gearmand.log'}", "--verbose=WARNING"]

    def admin(self, command: str) -> list[str]:
        """A text admin command (what gearadmin --workers/--status shows)."""
        return gearmand_admin("127.0.0.1", self.port, command)

    def workers(self, pool: str = "") -> list[tuple[str, int, list[str]]]:
        """(client id, pid, functions) of every registered worker of POOL."""
        found = []
        for line in self.admin("workers"):
            head, _, functions = line.partition(" : ")
            client_id = head.split()[-1]
            parts = client_id.split(":")
            if functions.strip() and len(parts) == 3 and (not pool or parts[1] == pool):
                found.append((client_id, int(parts[2]), functions.split()))
        return found

    def worker_pids(self, pool: str = "") -> set[int]:
        return {pid for _, pid, _ in self.workers(pool)}

    def status(self) -> dict[str, tuple[int, int, int]]:
        return gearmand_status(self.admin("status"))

    def client(self) -> gearman.GearmanClient:
        return gearman.GearmanClient([self.address])


def submit(server: Gearmand, task: str, data: bytes | str, timeout: float = WAIT) -> Any:
    """Submit one job and wait for its end (pygearman needs a poll_timeout)."""
    request = server.client().submit_job(task, data, poll_timeout=timeout)
    assert not request.timed_out, f"job {task} timed out"
    return request


class Pool:
    """bin/gearman-workers run as a real process, the way an operator runs it."""

    def __init__(self, gearmand: Gearmand, workdir: Path, *extra: str, name: str = "test",
                 processes: int = 2, config: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.gearmand = gearmand
        self.env = env
        self.name = name
        self.processes = processes
        self.state_dir = workdir / f"state-{name}"
        self.log_path = workdir / f"{name}.log"
        self.argv = [str(BIN / "gearman-workers"), "--config", str(config or EXAMPLES / "gearman-workers.toml"),
                     "--servers", gearmand.address, "--name", name, "--processes", str(processes),
                     "--state-dir", str(self.state_dir), "--graceful-timeout", "10", *extra]
        self.proc: subprocess.Popen | None = None

    @property
    def pidfile(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    def start(self, wait: bool = True) -> Pool:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, close_fds=True, env=self.env)
        if wait:
            self.wait_registered(self.processes)
        return self

    def wait_registered(self, count: int, exclude: set[int] = frozenset(), timeout: float = WAIT) -> set[int]:
        def ready() -> set[int] | None:
            assert self.proc is None or self.proc.poll() is None, f"pool exited: {self.log()}"
            pids = self.gearmand.worker_pids(self.name)
            return pids if len(pids) == count and not pids & exclude and self.children() == pids else None
        return wait_for(ready, timeout, f"{count} registered workers of pool {self.name}")

    def children(self) -> set[int]:
        """PIDs of the master's live children, from /proc."""
        return children_of(self.proc.pid) if self.proc is not None else set()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = WAIT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            children = self.children()
            stop_process(self.proc)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    if pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running(pool: Pool) -> Iterator[Pool]:
    try:
        pool.start()  # inside: a pool that fails to come up is stopped too
        yield pool
    finally:
        pool.stop()


def run_cli(name: str, *args: str, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


PYTHON = sys.executable
ANSWER_PATIENCE = "15"  # seconds a test's command waits for the pools' answers; it ends at the last one


def operator_cli(name: str, *args: str) -> subprocess.CompletedProcess:
    """gm-exit or gm-ctl; a command that pools answer waits for the answers
    patiently (a loaded machine), unless the test says how long."""
    sending = name == "gm-exit" or any(word in args for word in ("set", "del", "scale", "pause", "resume", "cancel"))
    patience = ("--timeout", ANSWER_PATIENCE) if sending and "--timeout" not in args else ()
    return run_cli(name, *args, *patience)


class RedisServer(LoopbackServer):
    """A redis-server of our own on a free loopback port; without persistence
    unless PERSISTENT (then an append-only file written at every change, as
    the redis role configures it, so that a restart keeps every key)."""

    name = "redis-server"

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        super().__init__(workdir)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        durable = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durable,
                "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


class Relay:
    """A TCP relay the test can cut and restore: a network outage between
    one pool and a server (Redis, gearmand), while everyone else still
    reaches it. A subclass may change what the server sends on its way
    (_to_client)."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self.connections = 0  # made through the relay so far
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client), daemon=True).start()

    def _to_client(self, upstream: socket.socket, client: socket.socket) -> None:
        self._pipe(upstream, client)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


# --- pools under fleet control ----------------------------------------------

CONTROL_TASKS = """
import os, time
from gearman_workers import runtime

def setting(worker, job):
    time.sleep(0.2)  # long enough that concurrent jobs spread over every child
    return f"{os.getpid()} {runtime.get(job.data.decode())!r}"
"""


def control_pool(gearmand: Gearmand, tmp_path: Path, url: str, *extra: str, name: str = "alpha",
                 host: str = "host-a", processes: int = 2) -> Pool:
    module = tmp_path / "ctltasks.py"
    module.write_text(CONTROL_TASKS)
    signing = () if "--secret-file" in extra else ("--allow-unsigned",)
    return Pool(gearmand, tmp_path, "--redis-url", url, "--hostname", host, "--python-path", str(tmp_path),
                "--python-path", str(EXAMPLES), "--task", "value=ctltasks:setting", *signing, *extra,
                name=name, processes=processes)


def fleet_pool(gearmand: Gearmand, tmp_path: Path, redis_url: str, module: str, source: str, tasks: str,
               records: str, *extra: str, name: str, host: str, processes: int = 2, pool: str = "",
               metrics_port: int = 0, schedules: str = "") -> Pool:
    """A pool under fleet control whose tasks are SOURCE, written as MODULE.py
    beside the test; they write what they record into tmp_path/RECORDS,
    named to them by GW_TEST_RUNS. TASKS: the [tasks] lines; POOL: more
    [pool] lines; SCHEDULES: the [schedules] lines."""
    (tmp_path / f"{module}.py").write_text(source)
    directory = tmp_path / records
    directory.mkdir(exist_ok=True)
    config = tmp_path / f"{name}.toml"
    listen = f"127.0.0.1:{metrics_port}" if metrics_port else ""
    config.write_text(f'[pool]\npython_path = ["{tmp_path}", "{EXAMPLES}"]\n{pool}'
                      f'[control]\nredis_url = "{redis_url}"\nallow_unsigned = true\n'
                      f'[tasks]\n{tasks}\n[metrics]\nlisten = "{listen}"\n'
                      + (f'[schedules]\n{schedules}\n' if schedules else ""))
    return Pool(gearmand, tmp_path, "--hostname", host, *extra, name=name, processes=processes, config=config,
                env={**os.environ, "GW_TEST_RUNS": str(directory)})


def heartbeat_up(redis_server: RedisServer, pool: Pool) -> bool:
    return any(p["name"] == pool.name and p["pid"] == pool.proc.pid  # type: ignore[union-attr]
               for p in pools(redis_server))


def pools(redis_server: RedisServer) -> list[dict]:
    client = redis_server.client()
    return [json.loads(client.get(k)) for k in client.scan_iter(match="gearman-workers:pool:*")]


def values_seen(gearmand: Gearmand, key: str, jobs: int) -> dict[int, str]:
    """Submit JOBS concurrent 'value' jobs; pid -> the value it saw."""
    client = gearmand.client()
    requests = client.submit_multiple_jobs([{"task": "value", "data": key} for _ in range(jobs)],
                                           poll_timeout=20)
    seen = {}
    for request in requests:
        assert request.complete, request
        pid, value = request.result.decode().split(" ", 1)
        seen[int(pid)] = value
    return seen


# --- metrics, as a scraper sees them ---------------------------------------------


def pool_config(tmp_path: Path, metrics_port: int | None = None, redis_url: str = "",
                autoscale: tuple[int, int] | None = None) -> Path:
    """The example tasks, a task with its own time limit, a segfaulting one;
    AUTOSCALE: (min_processes, max_processes). With a REDIS_URL, echo has
    retries (it never fails): the pool runs a job keeper and serves its metric."""
    bounds = f"min_processes = {autoscale[0]}\nmax_processes = {autoscale[1]}\n" if autoscale else ""
    echo = '{ call = "tasks:echo", retries = 1 }' if redis_url else '"tasks:echo"'
    path = tmp_path / "pool.toml"
    path.write_text(f'''
[pool]
python_path = ["{EXAMPLES}", "{TESTS}"]
heartbeat_timeout = 30
{bounds}[tasks]
echo = {echo}
fail = "tasks:fail"
slow = "tasks:slow"
nap = {{ call = "faulty_tasks:sleep", timeout = 0.3 }}
segfault = "faulty_tasks:segfault"
[metrics]
listen = "{f'127.0.0.1:{metrics_port}' if metrics_port else ''}"
[control]
redis_url = "{redis_url}"
allow_unsigned = true
''')
    return path



Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of a metrics page: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(port: int) -> Samples:
    """The metrics a pool serves on a loopback PORT."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return metric_samples(answer.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The first sample NAME with (at least) LABELS, or None."""
    for (sample_name, sample_labels), number in samples.items():
        if sample_name == name and labels.items() <= dict(sample_labels).items():
            return number
    return None
