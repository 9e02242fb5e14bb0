"""benchmarks/gpu.py --smoke runs every path (limit, every render option, scan, decode, projection)
and its figures hang together: ratios are rate / limit, option pictures stay near fp32's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_smoke_benchmark_reports_every_figure():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    limit = float(re.search(r"\(1\) limit: .*: ([\d,.]+) images/s", out).group(1).replace(",", ""))
    assert limit > 0
    for option in ("fp32", "bf16", "channels_last", "bf16+channels_last"):
        row = re.search(rf"^\s+{re.escape(option)}\s+(.*)$", out, re.M)
        assert row, option
        cells = re.findall(r"([\d,.]+) \(([\d.]+)x\)", row.group(1))
        assert len(cells) == 2, row.group(0)
        for rate, ratio in cells:
            assert float(ratio) == pytest.approx(float(rate.replace(",", "")) / limit, abs=0.01)
        difference = float(re.search(r"([\d.]+) / 255", row.group(1)).group(1))
        assert difference <= (0.01 if option == "fp32" else 8.0), "options keep the pictures within tolerance"
    compiled = re.search(r"^\s+channels_last\+compile\s+-\s+([\d,.]+) \(([\d.]+)x\)\s+([\d.]+) / 255$", out, re.M)
    assert compiled, "the compiled row runs at the largest batch in smoke mode"
    assert float(compiled.group(2)) == pytest.approx(float(compiled.group(1).replace(",", "")) / limit, abs=0.01)
    assert float(compiled.group(3)) <= 0.5, "compiling keeps channels_last's pictures (within float rounding)"
    scan = re.search(r"\(3\) scan of 12 Lucid layers, batch 8: ([\d,.]+) images/s = ([\d.]+)x the plain forward "
                     r"\(([\d,.]+) images/s\)", out)
    assert scan and float(scan.group(2)) == pytest.approx(
        float(scan.group(1).replace(",", "")) / float(scan.group(3).replace(",", "")), abs=0.01)
    assert re.search(r"JPEG decode cpu \(Pillow, per worker\): [\d,.]+ images/s", out)
    plain = float(scan.group(3).replace(",", ""))
    for decoder in (r"cpu decode \(Pillow, 1 workers\)", r"cpu decode \(torchvision.io.decode_jpeg\)"):
        loader = re.search(rf"scan from JPEG files, {decoder}: ([\d,.]+) images/s = ([\d.]+)x the plain forward", out)
        assert loader, decoder
        assert float(loader.group(2)) == pytest.approx(float(loader.group(1).replace(",", "")) / plain, abs=0.01)
    projection = re.search(r"\(4\) projection on this device: 5808 units x 512 steps = ([\d.]+) h of renders \+ "
                           r"([\d.]+) h to scan 1,281,167 images = ([\d.]+) h", out)
    assert projection
    renders, scan_hours, total = (float(projection.group(i)) for i in (1, 2, 3))
    assert total == pytest.approx(renders + scan_hours, abs=0.02)
