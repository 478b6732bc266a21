"""`rtcproctor bench signaling` runs end to end with small numbers and prints its figures.

Only that it ran and reported is asserted: the figures themselves are for people to read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(400)
def test_bench_signaling_prints_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rtcproctor", "bench", "signaling",
         "--clients", "50", "--rate", "100", "--seconds", "3"],
        capture_output=True, text=True, timeout=360,
        env={**os.environ, "RTCPROCTOR_LOG_LEVEL": "WARNING"},
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert re.search(rf"\b{os.cpu_count()} cores\b", out)
    assert re.search(r"50 of 50 connected, \d+ still connected", out)
    assert re.search(r"[\d.]+ msg/s achieved at a target of 100 msg/s", out)
    assert re.search(r"p50 [\d.]+ ms\s+p99 [\d.]+ ms\s+max [\d.]+ ms", out)
    assert re.search(r"go live\s+median [\d.]+ s\s+max [\d.]+ s\s+\(5 runs", out)
    for target in (">= 2,000 held", "p99 < 50 ms at 1,000 msg/s", "target: < 1.5 s"):
        assert target in out
