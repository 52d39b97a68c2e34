"""The benchmark harnesses that run in one process still run: bench/jobpath
drives the real job path, so a changed signature there breaks it silently
(it did once), and its figures are quoted in bench/README.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
ROW = re.compile(r"^  (\S.*?)\s+(\d+\.\d+)\b", re.MULTILINE)


def test_jobpath_times_every_variant_it_knows() -> None:
    # Its own list of variants, each in a process of its own, a few jobs each.
    out = subprocess.run([sys.executable, str(BENCH / "jobpath"), "--jobs", "50", "--repeats", "1",
                          "--processes", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = dict((name, float(figure)) for name, figure in ROW.findall(out.stdout))
    assert {"all on", "none", "floor"} <= rows.keys() and len(rows) >= 4
    assert all(figure > 0 for figure in rows.values())
