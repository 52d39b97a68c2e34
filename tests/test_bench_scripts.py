"""The benchmark harnesses that run in one process still run: bench/jobpath
drives the real job path, so a changed signature there breaks it silently
(it did once), and its figures are quoted in bench/README.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
ROW = re.compile(r"^  (\S.*?)\s+(\d+\.\d+)\b", re.MULTILINE)


def jobpath(*args: str, timeout: float = 120) -> dict[str, float]:
    """bench/jobpath ARGS: its figure per variant. Its own list of variants,
    each in a process of its own."""
    out = subprocess.run([sys.executable, str(BENCH / "jobpath"), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    rows = dict((name, float(figure)) for name, figure in ROW.findall(out.stdout))
    assert {"all on", "none", "floor"} <= rows.keys() and len(rows) >= 4
    assert all(figure > 0 for figure in rows.values())
    return rows


@pytest.mark.parametrize("woken", [False, True], ids=["back to back", "after a wake-up each"])
def test_jobpath_times_every_variant_it_knows(woken: bool) -> None:
    jobpath("--jobs", "50", "--repeats", "1", "--processes", "1", *(["--woken"] if woken else []))


def test_jobpath_counts_instructions_and_a_protection_taken_away_saves_some(valgrind: None) -> None:
    rows = jobpath("--instructions", "--woken", timeout=600)
    assert rows["none"] < rows["all on"] and rows["floor"] < rows["none"]


def test_a_ratio_to_c_comes_with_an_interval_that_holds_its_median() -> None:
    """bench/run quotes each ratio with a 95 % interval for its median: the
    same rounds always give the same interval, it holds the median, and
    rounds that all agree leave no doubt."""
    sys.path.insert(0, str(BENCH))
    try:
        from common import median_interval
    finally:
        sys.path.remove(str(BENCH))
    rounds = [0.97, 1.04, 0.99, 1.08, 0.93, 1.01, 1.02]
    low, high = median_interval(rounds)
    assert low < 1.01 < high and (low, high) == median_interval(rounds)
    assert min(rounds) <= low and high <= max(rounds)
    assert median_interval([1.02] * 5) == (1.02, 1.02)
