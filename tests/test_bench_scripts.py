"""The benchmark harnesses that run in one process still run: bench/jobpath
drives the real job path, so a changed signature there breaks it silently
(it did once), and its figures are quoted in bench/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
JOBPATH_VARIANTS = ("all on", "no time limit", "no metrics", "no poison check", "no slot writes", "no title",
                    "none", "floor")


@pytest.mark.parametrize("variant", JOBPATH_VARIANTS)
def test_every_jobpath_variant_times_jobs(variant: str) -> None:
    out = subprocess.run([sys.executable, str(BENCH / "jobpath"), "--variant", variant, "--jobs", "50",
                          "--repeats", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    times = [float(figure) for figure in out.stdout.split()]
    assert len(times) == 2 and all(t > 0 for t in times)
