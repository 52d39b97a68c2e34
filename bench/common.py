"""What the benchmark scripts share: loading one script's functions from
another, starting a pool, the machine's description, percentiles, and
process figures from /proc."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")


def load_script(name: str) -> ModuleType:
    """A script of bench/ (no .py: they are commands) as a module."""
    loader = importlib.machinery.SourceFileLoader(name, str(HERE / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def start_pool(servers: str, state_dir: Path, *args: str, python_path: Path = ROOT / "examples",
               tree: Path = ROOT) -> subprocess.Popen:
    """TREE's bin/gearman-workers on SERVERS, quiet but for warnings; ARGS
    name its tasks, size and the rest. Another TREE (bench/run --against)
    runs on this checkout's venv: only its code differs."""
    venv = {"GW_PYTHON": str(ROOT / ".venv/bin/python")} if (ROOT / ".venv/bin/python").exists() else {}
    return subprocess.Popen(
        [str(tree / "bin/gearman-workers"), "--servers", servers, "--python-path", str(python_path),
         "--state-dir", str(state_dir), "--log-level", "warning", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **venv})


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gearmand = subprocess.run(["gearmand", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "gearmand": gearmand, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def percentile(values: list[float], p: float) -> float:
    """The P-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def median_interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95 % interval for the median of VALUES (bootstrap: the median of
    VALUES drawn again with replacement, DRAWS times; seeded, so one set of
    values always gives the same interval). Few values give a wide one."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975) - 1]


def wait_until(predicate: object, timeout: float, what: str, step: float = 0.001) -> None:
    """Poll PREDICATE every STEP seconds (a millisecond: the figures are in
    milliseconds, so the tests' 20 ms polling would be most of them)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def cpu_seconds(pid: int) -> float:
    """CPU time of PID's threads so far (0 if gone): the scheduler's
    nanoseconds on a CPU where the kernel keeps them (/proc/PID/task/*/schedstat),
    else user + system time in clock ticks (10 ms: too coarse for a few
    thousand jobs of 50 us)."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (FileNotFoundError, ProcessLookupError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages count once across the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' helpers: gearmand and Redis of our own
