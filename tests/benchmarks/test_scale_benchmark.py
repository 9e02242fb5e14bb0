"""benchmarks/scale.py runs its whole simulation (real planner, Ray, S3 server, reduce, publish) at
a tiny fraction and reports every figure the control-plane targets are judged by."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # starts Ray and an S3 server, builds two models' atlases: about a minute on 2 cores
def test_the_simulation_reports_every_figure():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--fractions", "0.002",
                          "--actors", "2"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = run.stdout
    assert out.startswith("SIMULATION:")
    items = int(re.search(r"scale 0\.002: 2,562 images, ([\d,]+) items", out).group(1).replace(",", ""))
    assert items > 100
    execute = re.search(r"execute\s+([\d.]+) s\s+=\s+([\d.]+) items/s sustained; ([\d.]+) storage requests per item",
                        out)
    assert execute and float(execute.group(2)) == pytest.approx(items / float(execute.group(1)), rel=0.05)
    assert 1 <= float(execute.group(3)) < 50
    for figure in ("plan", "publish", "read state", "declare arrays", "fields check"):
        assert re.search(rf"^\s+{figure}\s+[\d.]+ s\s+\([\d,]+ requests", out, re.M), figure
    assert re.search(r"driver peak memory [\d,]+ MB", out)
    assert re.search(r"reduce\s+peak [\d,.]+ MB of Python/numpy allocations", out)
